package registryapi

import (
	"errors"
	"fmt"
	"mime"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Docker's schema2 media types, which the OCI manifest and index mirror.
const (
	mediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	mediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// manifestTypes are the media types a pushed manifest may have: true for an
// index (a manifests array), false for an image manifest (config and layers).
var manifestTypes = map[string]bool{
	ocispec.MediaTypeImageManifest: false,
	mediaTypeDockerManifest:        false,
	ocispec.MediaTypeImageIndex:    true,
	mediaTypeDockerManifestList:    true,
}

// genericTypes are Content-Types that name no manifest type: what curl and
// plain HTTP clients send unasked. The body's mediaType field decides then.
var genericTypes = map[string]bool{
	"application/octet-stream":          true,
	"application/x-www-form-urlencoded": true,
}

// manifestMediaType is the media type of a pushed manifest: its Content-Type,
// which the body's mediaType field (bodyType, if set) must agree with; or,
// when the Content-Type is missing or generic, bodyType. It must be one of
// manifestTypes: anything else would be served back as something no client
// can pull.
func manifestMediaType(contentType, bodyType string) (string, error) {
	mt := ""
	if contentType != "" {
		parsed, _, err := mime.ParseMediaType(contentType)
		if err != nil {
			return "", fmt.Errorf("invalid Content-Type %q: %w", contentType, err)
		}
		if !genericTypes[parsed] {
			mt = parsed
		}
	}
	switch {
	case mt == "" && bodyType == "":
		return "", errors.New("no media type: set Content-Type")
	case mt == "":
		mt = bodyType
	case bodyType != "" && bodyType != mt:
		return "", fmt.Errorf("mediaType %q does not match Content-Type %q", bodyType, mt)
	}
	if _, ok := manifestTypes[mt]; !ok {
		return "", fmt.Errorf("unsupported manifest media type %q", mt)
	}
	return mt, nil
}

// manifestDoc is the structure every pushed manifest must have; a field of
// the wrong JSON type fails decoding.
type manifestDoc struct {
	SchemaVersion *int         `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        *descriptor  `json:"config"`
	Layers        []descriptor `json:"layers"`
	Manifests     []descriptor `json:"manifests"`
	Subject       *descriptor  `json:"subject"`
}

// descriptor is the part of an OCI descriptor a puller relies on.
type descriptor struct {
	MediaType string        `json:"mediaType"`
	Digest    digest.Digest `json:"digest"`
	Size      *int64        `json:"size"`
}

// check requires what the image-spec requires of a descriptor, with the
// digest check the store applies to a subject (sha256 or sha512 only).
func (d descriptor) check() error {
	if d.MediaType == "" {
		return errors.New("no mediaType")
	}
	if d.Size == nil || *d.Size < 0 {
		return errors.New("size missing or negative")
	}
	return blobstore.CheckDigest(d.Digest)
}

// checkManifest checks that doc is a schema 2 manifest of media type mt: an
// image manifest has a config and a layers array (possibly empty), an index
// a manifests array, and every descriptor is valid. The blobs and manifests
// referenced need not exist.
func checkManifest(doc manifestDoc, mt string) error {
	if doc.SchemaVersion == nil || *doc.SchemaVersion != 2 {
		return errors.New("schemaVersion must be 2")
	}
	if doc.Subject != nil {
		if err := doc.Subject.check(); err != nil {
			return fmt.Errorf("subject: %w", err)
		}
	}
	if manifestTypes[mt] {
		if doc.Manifests == nil {
			return fmt.Errorf("%s needs a manifests array", mt)
		}
		return checkAll("manifests", doc.Manifests)
	}
	if doc.Config == nil {
		return fmt.Errorf("%s needs a config", mt)
	}
	// layers may be absent or null: Go's image-spec types write a nil slice
	// as null, and Docker Hub and the distribution registry take it.
	if err := doc.Config.check(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return checkAll("layers", doc.Layers)
}

// checkAll checks the descriptors of array field.
func checkAll(field string, descs []descriptor) error {
	for i, d := range descs {
		if err := d.check(); err != nil {
			return fmt.Errorf("%s[%d]: %w", field, i, err)
		}
	}
	return nil
}
