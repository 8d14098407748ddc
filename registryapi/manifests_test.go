package registryapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// edited returns the JSON document v re-encoded after edit changed it as a
// generic object (to set fields to values their Go types cannot hold).
func edited(t *testing.T, v any, edit func(m map[string]any)) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	edit(m)
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	return b
}

// testImage is a valid OCI image manifest and index over it.
func testImage() (ocispec.Manifest, ocispec.Index) {
	config, layer := []byte(`{}`), []byte("layer")
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromBytes(layer), Size: int64(len(layer))}},
	}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	idx := ocispec.Index{
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{{
			MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mb), Size: int64(len(mb)),
			Platform: &ocispec.Platform{OS: "linux", Architecture: "amd64"},
		}},
	}
	idx.SchemaVersion = 2
	return m, idx
}

// TestManifestPushRejectsInvalid: a body that is not a well-formed manifest
// of a supported media type is 400 MANIFEST_INVALID, and nothing of it is
// stored: no blob, no tag, not pullable by tag or digest.
func TestManifestPushRejectsInvalid(t *testing.T) {
	t.Parallel()
	man, idx := testImage()
	valid, _ := json.Marshal(man)
	layer := func(edit func(l map[string]any)) func(m map[string]any) {
		return func(m map[string]any) { edit(m["layers"].([]any)[0].(map[string]any)) }
	}
	config := func(edit func(c map[string]any)) func(m map[string]any) {
		return func(m map[string]any) { edit(m["config"].(map[string]any)) }
	}
	oci, index := ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex
	tests := []struct {
		name, contentType string
		body              []byte
	}{
		{"empty object", oci, []byte(`{}`)},
		{"schema version 1", oci, []byte(`{"schemaVersion":1}`)},
		{"schema version string", oci, []byte(`{"schemaVersion":"two"}`)},
		{"schema version missing", oci, edited(t, man, func(m map[string]any) { delete(m, "schemaVersion") })},
		{"manifests not a list", index, edited(t, idx, func(m map[string]any) { m["manifests"] = "notalist" })},
		{"index without manifests", index, edited(t, idx, func(m map[string]any) { delete(m, "manifests") })},
		{"index entry bad digest", index, edited(t, idx, func(m map[string]any) { m["manifests"].([]any)[0].(map[string]any)["digest"] = "sha256:xyz" })},
		{"config digest malformed", oci, edited(t, man, config(func(c map[string]any) { c["digest"] = "sha256:xyz" }))},
		{"config size negative", oci, edited(t, man, config(func(c map[string]any) { c["size"] = -5 }))},
		{"config without mediaType", oci, edited(t, man, config(func(c map[string]any) { delete(c, "mediaType") }))},
		{"config missing", oci, edited(t, man, func(m map[string]any) { delete(m, "config") })},
		{"layer digest md5", oci, edited(t, man, layer(func(l map[string]any) { l["digest"] = "md5:abc" }))},
		{"layer digest short", oci, edited(t, man, layer(func(l map[string]any) { l["digest"] = "sha256:abc" }))},
		{"layer without size", oci, edited(t, man, layer(func(l map[string]any) { delete(l, "size") }))},
		{"layer size not a number", oci, edited(t, man, layer(func(l map[string]any) { l["size"] = "5" }))},
		{"subject without mediaType", oci, edited(t, man, func(m map[string]any) {
			m["subject"] = map[string]any{"digest": idx.Manifests[0].Digest, "size": 1}
		})},
		{"image as index", index, edited(t, man, func(m map[string]any) { delete(m, "mediaType") })},
		{"Content-Type image/png", "image/png", edited(t, man, func(m map[string]any) { delete(m, "mediaType") })},
		{"Content-Type unsupported manifest", "application/vnd.docker.distribution.manifest.v1+prettyjws", []byte(`{"schemaVersion":1,"name":"app","tag":"bad","fsLayers":[]}`)},
		{"curl form type, no mediaType", "application/x-www-form-urlencoded", edited(t, man, func(m map[string]any) { delete(m, "mediaType") })},
		{"no Content-Type, unsupported mediaType", "", edited(t, man, func(m map[string]any) { m["mediaType"] = "image/png" })},
		{"octet-stream, unsupported mediaType", "application/octet-stream", edited(t, man, func(m map[string]any) { m["mediaType"] = "application/json" })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, nil)
			want(t, pushManifest(t, ts, "app", "v1", valid, oci), http.StatusCreated, "")
			before := snap(t, ts.store)

			var hdr []string
			if tt.contentType != "" {
				hdr = []string{"Content-Type", tt.contentType}
			}
			d := digest.FromBytes(tt.body)
			want(t, do(t, "PUT", ts.URL+"/v2/app/manifests/bad", tt.body, hdr...), http.StatusBadRequest, "MANIFEST_INVALID")
			want(t, do(t, "PUT", ts.URL+"/v2/app/manifests/"+d.String()+"?tag=bad2", tt.body, hdr...), http.StatusBadRequest, "MANIFEST_INVALID")

			want(t, do(t, "GET", ts.URL+"/v2/app/manifests/bad", nil), http.StatusNotFound, "MANIFEST_UNKNOWN")
			want(t, do(t, "HEAD", ts.URL+"/v2/app/manifests/bad2", nil), http.StatusNotFound, "")
			want(t, do(t, "GET", ts.URL+"/v2/app/manifests/"+d.String(), nil), http.StatusNotFound, "MANIFEST_UNKNOWN")
			if r := do(t, "GET", ts.URL+"/v2/app/tags/list", nil); string(r.body) != `{"name":"app","tags":["v1"]}` {
				t.Fatalf("tags after rejected pushes: %s", r.body)
			}
			if !snap(t, ts.store).equal(before) {
				t.Fatal("store changed by a rejected manifest")
			}
		})
	}
}

// TestManifestPushAcceptsValid: well-formed manifests of every supported
// type, including the shapes the conformance suite pushes (no layers,
// artifacts, unknown fields, sha512, subjects of absent manifests), are
// stored and served back byte for byte with their media type.
func TestManifestPushAcceptsValid(t *testing.T) {
	t.Parallel()
	man, idx := testImage()
	empty := ocispec.DescriptorEmptyJSON
	sha512 := digest.SHA512.FromString("layer")
	oci, index := ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex
	docker, dockerList := "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.docker.distribution.manifest.list.v2+json"
	tests := []struct {
		name, contentType, served string
		body                      []byte
	}{
		{"image", oci, oci, edited(t, man, func(map[string]any) {})},
		{"image without mediaType field", oci, oci, edited(t, man, func(m map[string]any) { delete(m, "mediaType") })},
		{"no layers", oci, oci, edited(t, man, func(m map[string]any) { m["layers"] = []any{} })},
		{"layers null (Go's image-spec types with no layers)", oci, oci, edited(t, man, func(m map[string]any) { m["layers"] = nil })},
		{"layers missing", oci, oci, edited(t, man, func(m map[string]any) { delete(m, "layers") })},
		{"artifact with empty config and data", oci, oci, edited(t, man, func(m map[string]any) {
			m["artifactType"] = "application/vnd.example.sbom"
			m["config"] = map[string]any{"mediaType": empty.MediaType, "digest": empty.Digest, "size": empty.Size, "data": empty.Data}
		})},
		{"nondistributable layer with urls", oci, oci, edited(t, man, func(m map[string]any) {
			m["layers"] = []any{map[string]any{
				"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
				"digest":    digest.FromString("foreign"), "size": 7, "urls": []string{"https://example.com/layer"},
			}}
		})},
		{"sha512 and custom fields", oci, oci, edited(t, man, func(m map[string]any) {
			m["layers"].([]any)[0].(map[string]any)["digest"] = sha512
			m["layers"].([]any)[0].(map[string]any)["newUnspecifiedField"] = "x"
			m["newUnspecifiedField"] = map[string]any{"a": 1}
		})},
		{"subject absent from registry", oci, oci, edited(t, man, func(m map[string]any) {
			m["subject"] = map[string]any{"mediaType": oci, "digest": digest.FromString("elsewhere"), "size": 9}
		})},
		{"index", index, index, edited(t, idx, func(map[string]any) {})},
		{"empty index", index, index, edited(t, idx, func(m map[string]any) { m["manifests"] = []any{} })},
		{"docker manifest", docker, docker, edited(t, man, func(m map[string]any) { m["mediaType"] = docker })},
		{"docker manifest list", dockerList, dockerList, edited(t, idx, func(m map[string]any) { m["mediaType"] = dockerList })},
		{"Content-Type with parameters", oci + "; charset=utf-8", oci, edited(t, man, func(map[string]any) {})},
		{"no Content-Type", "", oci, edited(t, man, func(map[string]any) {})},
		{"curl form type", "application/x-www-form-urlencoded", index, edited(t, idx, func(map[string]any) {})},
		{"octet-stream", "application/octet-stream", docker, edited(t, man, func(m map[string]any) { m["mediaType"] = docker })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, nil)
			var hdr []string
			if tt.contentType != "" {
				hdr = []string{"Content-Type", tt.contentType}
			}
			want(t, do(t, "PUT", ts.URL+"/v2/app/manifests/v1", tt.body, hdr...), http.StatusCreated, "")
			r := do(t, "GET", ts.URL+"/v2/app/manifests/v1", nil)
			want(t, r, http.StatusOK, "")
			if !bytes.Equal(r.body, tt.body) || r.header.Get("Content-Type") != tt.served {
				t.Fatalf("served %q as %q; want %s", r.body, r.header.Get("Content-Type"), tt.served)
			}
		})
	}
}
