package registryapi

import (
	"net/http"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// referrers serves GET /v2/<name>/referrers/<digest>[?artifactType=]: an
// image index of the manifests whose subject is digest (empty, not 404, for
// an unknown subject).
func (s *Server) referrers(w http.ResponseWriter, r *http.Request, rt route) {
	d, perr := parseDigest(rt.ref)
	if perr != nil {
		s.fail(w, r, perr)
		return
	}
	descs, err := s.store.Referrers(r.Context(), s.key(nodeName(r, rt)), d)
	if err != nil {
		s.fail(w, r, classify(err, CodeManifestUnknown))
		return
	}
	if at := r.URL.Query().Get("artifactType"); at != "" {
		kept := descs[:0:0]
		for _, desc := range descs {
			if desc.ArtifactType == at {
				kept = append(kept, desc)
			}
		}
		descs = kept
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if descs == nil {
		descs = []ocispec.Descriptor{}
	}
	writeJSON(w, r, ocispec.MediaTypeImageIndex, struct {
		SchemaVersion int                  `json:"schemaVersion"`
		MediaType     string               `json:"mediaType"`
		Manifests     []ocispec.Descriptor `json:"manifests"`
	}{2, ocispec.MediaTypeImageIndex, descs})
}
