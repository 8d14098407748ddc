package registryapi

import (
	"bytes"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// TestBadInput sends each kind of bad request to a server holding one
// image and checks the status, the OCI error code, that the store is
// unchanged and that the server still serves the image.
func TestBadInput(t *testing.T) {
	t.Parallel()
	blob := []byte("0123456789abcdef")
	bd := digest.FromBytes(blob)
	man := imageManifest(t, []byte("c"), blob, nil, "")
	big := append([]byte(`{"mediaType":"`+ocispec.MediaTypeImageManifest+`","x":"`), bytes.Repeat([]byte("a"), 4<<20)...)
	big = append(big, `"}`...)
	sha512 := digest.SHA512.FromBytes(blob)
	badSubject := imageManifest(t, []byte("c"), blob, &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: "sha256:1", Size: 1}, "")
	session := "{session}" // replaced by a fresh upload session URL path
	tests := []struct {
		name, method, path string
		body               []byte
		hdr                []string
		status             int
		code               string
	}{
		{name: "uppercase name", method: "GET", path: "/v2/Team/app/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "dot-dot name", method: "GET", path: "/v2/team/../app/manifests/v1", status: 400, code: "NAME_INVALID"},
		{name: "name over 255", method: "GET", path: "/v2/" + strings.Repeat("a", 256) + "/tags/list", status: 400, code: "NAME_INVALID"},
		{name: "name trailing separator", method: "GET", path: "/v2/app-/blobs/" + bd.String(), status: 400, code: "NAME_INVALID"},
		{name: "push to bad name", method: "POST", path: "/v2/A/blobs/uploads/?digest=" + bd.String(), body: blob, status: 400, code: "NAME_INVALID"},
		{name: "malformed digest", method: "GET", path: "/v2/app/blobs/sha256:xyz", status: 400, code: "DIGEST_INVALID"},
		{name: "unsupported digest", method: "GET", path: "/v2/app/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", status: 400, code: "DIGEST_INVALID"},
		{name: "bad manifest digest", method: "GET", path: "/v2/app/manifests/sha256:baddigeststring", status: 400, code: "DIGEST_INVALID"},
		{name: "bad tag", method: "GET", path: "/v2/app/manifests/-bad", status: 400, code: "MANIFEST_INVALID"},
		{name: "bad referrers digest", method: "GET", path: "/v2/app/referrers/sha256:1", status: 400, code: "DIGEST_INVALID"},
		{name: "monolithic digest mismatch", method: "POST", path: "/v2/app/blobs/uploads/?digest=" + digest.FromString("other").String(), body: blob, status: 400, code: "DIGEST_INVALID"},
		{name: "monolithic sha512 mismatch", method: "POST", path: "/v2/app/blobs/uploads/?digest=" + digest.SHA512.FromString("other").String(), body: blob, status: 400, code: "DIGEST_INVALID"},
		{name: "monolithic unsupported digest", method: "POST", path: "/v2/app/blobs/uploads/?digest=md5:d41d8cd98f00b204e9800998ecf8427e", body: blob, status: 400, code: "DIGEST_INVALID"},
		{name: "finish with bad digest", method: "PUT", path: session + "?digest=sha256:nope", body: blob, status: 400, code: "DIGEST_INVALID"},
		{name: "finish digest mismatch", method: "PUT", path: session + "?digest=" + sha512.String(), body: []byte("not the blob"), status: 400, code: "DIGEST_INVALID"},
		{name: "chunk out of order", method: "PATCH", path: session, body: blob, hdr: []string{"Content-Range", "5-20"}, status: 416, code: "RANGE_INVALID"},
		{name: "chunk bad content-range", method: "PATCH", path: session, body: blob, hdr: []string{"Content-Range", "zero-15"}, status: 416, code: "RANGE_INVALID"},
		{name: "chunk length mismatch", method: "PATCH", path: session, body: blob, hdr: []string{"Content-Range", "0-3"}, status: 400, code: "SIZE_INVALID"},
		{name: "unknown upload", method: "PATCH", path: "/v2/app/blobs/uploads/nope", body: blob, status: 404, code: "BLOB_UPLOAD_UNKNOWN"},
		{name: "manifest too large", method: "PUT", path: "/v2/app/manifests/big", body: big, hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 413, code: "MANIFEST_INVALID"},
		{name: "manifest not JSON", method: "PUT", path: "/v2/app/manifests/v2", body: []byte("{nope"), hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 400, code: "MANIFEST_INVALID"},
		{name: "manifest JSON null", method: "PUT", path: "/v2/app/manifests/v2", body: []byte("null"), hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 400, code: "MANIFEST_INVALID"},
		{name: "manifest media type mismatch", method: "PUT", path: "/v2/app/manifests/v2", body: man, hdr: []string{"Content-Type", ocispec.MediaTypeImageIndex}, status: 400, code: "MANIFEST_INVALID"},
		{name: "manifest without media type", method: "PUT", path: "/v2/app/manifests/v2", body: []byte(`{"schemaVersion":2}`), status: 400, code: "MANIFEST_INVALID"},
		{name: "manifest digest mismatch", method: "PUT", path: "/v2/app/manifests/" + digest.FromString("x").String(), body: man, hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 400, code: "DIGEST_INVALID"},
		{name: "manifest bad subject", method: "PUT", path: "/v2/app/manifests/v2", body: badSubject, hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 400, code: "MANIFEST_INVALID"},
		{name: "manifest bad tag param", method: "PUT", path: "/v2/app/manifests/" + digest.FromBytes(man).String() + "?tag=.bad", body: man, hdr: []string{"Content-Type", ocispec.MediaTypeImageManifest}, status: 400, code: "MANIFEST_INVALID"},
		{name: "range beyond end", method: "GET", path: "/v2/app/blobs/" + bd.String(), hdr: []string{"Range", "bytes=100-200"}, status: 416, code: "RANGE_INVALID"},
		{name: "range empty suffix", method: "GET", path: "/v2/app/blobs/" + bd.String(), hdr: []string{"Range", "bytes=-0"}, status: 416, code: "RANGE_INVALID"},
		{name: "missing blob", method: "GET", path: "/v2/app/blobs/" + sha512.String(), status: 404, code: "BLOB_UNKNOWN"},
		{name: "missing manifest", method: "GET", path: "/v2/app/manifests/nope", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "delete missing tag", method: "DELETE", path: "/v2/app/manifests/nope", status: 404, code: "MANIFEST_UNKNOWN"},
		{name: "delete blob elsewhere", method: "DELETE", path: "/v2/other/blobs/" + bd.String(), status: 404, code: "BLOB_UNKNOWN"},
		{name: "bad page size", method: "GET", path: "/v2/app/tags/list?n=-1", status: 400, code: "PAGINATION_NUMBER_INVALID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, nil)
			pushBlob(t, ts, "app", blob)
			want(t, pushManifest(t, ts, "app", "v1", man, ocispec.MediaTypeImageManifest), http.StatusCreated, "")
			path := tt.path
			if strings.HasPrefix(path, session) {
				path = strings.TrimPrefix(startSession(t, ts, "app"), ts.URL) + strings.TrimPrefix(path, session)
			}
			before := snap(t, ts.store)

			r := do(t, tt.method, ts.URL+path, tt.body, tt.hdr...)
			want(t, r, tt.status, tt.code)

			if !snap(t, ts.store).equal(before) {
				t.Fatal("store changed")
			}
			got := do(t, "GET", ts.URL+"/v2/app/manifests/v1", nil)
			if got.status != 200 || !bytes.Equal(got.body, man) {
				t.Fatalf("image no longer served: %d", got.status)
			}
			if tt.status == 416 && strings.HasPrefix(path, "/v2/app/blobs/sha") && r.header.Get("Content-Range") != "bytes */16" {
				t.Fatalf("416 Content-Range %q", r.header.Get("Content-Range"))
			}
		})
	}
}
