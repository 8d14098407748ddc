package registryapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

func TestEndpoints(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	tests := []struct {
		name, method, path string
		status             int
		code               string
		body               string
	}{
		{name: "ping", method: "GET", path: "/v2/", status: 200, body: "{}"},
		{name: "ping head", method: "HEAD", path: "/v2/", status: 200},
		{name: "ping without slash", method: "GET", path: "/v2", status: 200, body: "{}"},
		{name: "healthz", method: "GET", path: "/healthz", status: 200, body: "ok\n"},
		{name: "readyz", method: "GET", path: "/readyz", status: 200, body: "ok\n"},
		{name: "unknown route", method: "GET", path: "/nope", status: 404, code: "UNSUPPORTED"},
		{name: "unknown v2 route", method: "GET", path: "/v2/foo/bar", status: 404, code: "UNSUPPORTED"},
		{name: "empty manifest ref", method: "GET", path: "/v2/foo/manifests/", status: 404, code: "UNSUPPORTED"},
		{name: "ping wrong method", method: "POST", path: "/v2/", status: 405, code: "UNSUPPORTED"},
		{name: "manifest wrong method", method: "PATCH", path: "/v2/a/manifests/x", status: 405, code: "UNSUPPORTED"},
		{name: "healthz wrong method", method: "POST", path: "/healthz", status: 405, code: "UNSUPPORTED"},
		{name: "blob wrong method", method: "PUT", path: "/v2/a/blobs/sha256:" + strings.Repeat("a", 64), status: 405, code: "UNSUPPORTED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tt.method, ts.URL+tt.path, nil)
			want(t, r, tt.status, tt.code)
			if tt.body != "" && string(r.body) != tt.body {
				t.Fatalf("body %q, want %q", r.body, tt.body)
			}
			if strings.HasPrefix(tt.path, "/v2/") && r.header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
				t.Fatalf("missing Docker-Distribution-API-Version header: %v", r.header)
			}
			if tt.status == 405 && r.header.Get("Allow") == "" {
				t.Fatal("405 without Allow header")
			}
		})
	}
}

// unwritable is a store whose disk is gone.
type unwritable struct{ *blobstore.Memory }

func (unwritable) Writable(context.Context) error { return errors.New("read-only file system") }

func TestReadyzUnwritableStore(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, func(o *Options) { o.Store = unwritable{blobstore.NewMemory()} })
	want(t, do(t, "GET", ts.URL+"/readyz", nil), http.StatusServiceUnavailable, "UNAVAILABLE")
	want(t, do(t, "GET", ts.URL+"/healthz", nil), http.StatusOK, "")
}

// imageManifest returns an OCI image manifest over config and layers.
func imageManifest(t *testing.T, config, layer []byte, subject *ocispec.Descriptor, artifactType string) []byte {
	t.Helper()
	m := ocispec.Manifest{
		MediaType:    ocispec.MediaTypeImageManifest,
		ArtifactType: artifactType,
		Config:       ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:       []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}},
		Subject:      subject,
		Annotations:  map[string]string{"org.example.test": t.Name()},
	}
	m.SchemaVersion = 2
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPushPullDelete(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	repo := "team/app"
	config, layer := []byte(`{"architecture":"amd64"}`), []byte("layer bytes 0123456789")
	dc, dl := pushBlob(t, ts, repo, config), pushBlob(t, ts, repo, layer)
	man := imageManifest(t, config, layer, nil, "")
	dm := digest.FromBytes(man)

	r := pushManifest(t, ts, repo, "v1", man, ocispec.MediaTypeImageManifest)
	want(t, r, http.StatusCreated, "")
	if r.header.Get("Docker-Content-Digest") != dm.String() || r.header.Get("Location") != "/v2/"+repo+"/manifests/"+dm.String() {
		t.Fatalf("manifest push headers: %v", r.header)
	}
	for _, ref := range []string{"v1", dm.String()} {
		r = do(t, "GET", ts.URL+"/v2/"+repo+"/manifests/"+ref, nil)
		want(t, r, http.StatusOK, "")
		if !bytes.Equal(r.body, man) || r.header.Get("Content-Type") != ocispec.MediaTypeImageManifest ||
			r.header.Get("Docker-Content-Digest") != dm.String() {
			t.Fatalf("GET manifest %s: %v %q", ref, r.header, r.body)
		}
		r = do(t, "HEAD", ts.URL+"/v2/"+repo+"/manifests/"+ref, nil)
		want(t, r, http.StatusOK, "")
		if len(r.body) != 0 || r.header.Get("Content-Length") != fmt.Sprint(len(man)) {
			t.Fatalf("HEAD manifest %s: %v %q", ref, r.header, r.body)
		}
	}
	r = do(t, "GET", ts.URL+"/v2/"+repo+"/blobs/"+dl.String(), nil)
	want(t, r, http.StatusOK, "")
	if !bytes.Equal(r.body, layer) || r.header.Get("Docker-Content-Digest") != dl.String() ||
		r.header.Get("ETag") != `"`+dl.String()+`"` || r.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("GET blob: %v %q", r.header, r.body)
	}
	r = do(t, "GET", ts.URL+"/v2/"+repo+"/blobs/"+dl.String(), nil, "Range", "bytes=6-10")
	want(t, r, http.StatusPartialContent, "")
	if string(r.body) != "bytes" || r.header.Get("Content-Range") != fmt.Sprintf("bytes 6-10/%d", len(layer)) {
		t.Fatalf("range: %v %q", r.header, r.body)
	}
	r = do(t, "HEAD", ts.URL+"/v2/"+repo+"/blobs/"+dc.String(), nil)
	if r.status != 200 || r.header.Get("Content-Length") != fmt.Sprint(len(config)) {
		t.Fatalf("HEAD blob: %d %v", r.status, r.header)
	}
	// The blob is visible only in the repository it was pushed to.
	want(t, do(t, "GET", ts.URL+"/v2/other/blobs/"+dl.String(), nil), http.StatusNotFound, "BLOB_UNKNOWN")

	r = do(t, "GET", ts.URL+"/v2/"+repo+"/tags/list", nil)
	want(t, r, http.StatusOK, "")
	if string(r.body) != `{"name":"team/app","tags":["v1"]}` {
		t.Fatalf("tags: %s", r.body)
	}

	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/manifests/v1", nil), http.StatusAccepted, "")
	want(t, do(t, "GET", ts.URL+"/v2/"+repo+"/manifests/v1", nil), http.StatusNotFound, "MANIFEST_UNKNOWN")
	want(t, do(t, "GET", ts.URL+"/v2/"+repo+"/manifests/"+dm.String(), nil), http.StatusOK, "")
	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/manifests/v1", nil), http.StatusNotFound, "MANIFEST_UNKNOWN")
	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/manifests/"+dm.String(), nil), http.StatusAccepted, "")
	want(t, do(t, "HEAD", ts.URL+"/v2/"+repo+"/manifests/"+dm.String(), nil), http.StatusNotFound, "")
	// A blob is no manifest: deleting it through the manifests endpoint fails.
	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/manifests/"+dl.String(), nil), http.StatusNotFound, "MANIFEST_UNKNOWN")
	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/blobs/"+dl.String(), nil), http.StatusAccepted, "")
	want(t, do(t, "GET", ts.URL+"/v2/"+repo+"/blobs/"+dl.String(), nil), http.StatusNotFound, "BLOB_UNKNOWN")
	want(t, do(t, "DELETE", ts.URL+"/v2/"+repo+"/blobs/"+dl.String(), nil), http.StatusNotFound, "BLOB_UNKNOWN")
}

func TestManifestMediaTypeFromBody(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	man := imageManifest(t, []byte("c"), []byte("l"), nil, "")
	// No Content-Type: the body's mediaType field is used.
	want(t, do(t, "PUT", ts.URL+"/v2/r/manifests/t", man), http.StatusCreated, "")
	r := do(t, "GET", ts.URL+"/v2/r/manifests/t", nil)
	if r.header.Get("Content-Type") != ocispec.MediaTypeImageManifest {
		t.Fatalf("Content-Type %q", r.header.Get("Content-Type"))
	}
}

func TestSubjectAndReferrers(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	repo := "r"
	subj := imageManifest(t, []byte("c"), []byte("l"), nil, "")
	want(t, pushManifest(t, ts, repo, "base", subj, ocispec.MediaTypeImageManifest), http.StatusCreated, "")
	sd := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(subj), Size: int64(len(subj))}
	sig := imageManifest(t, []byte("c"), []byte("sig"), &sd, "application/vnd.example.sig")
	sbom := imageManifest(t, []byte("c"), []byte("sbom"), &sd, "")
	for _, m := range [][]byte{sig, sbom} {
		r := pushManifest(t, ts, repo, digest.FromBytes(m).String(), m, ocispec.MediaTypeImageManifest)
		want(t, r, http.StatusCreated, "")
		if r.header.Get("OCI-Subject") != sd.Digest.String() {
			t.Fatalf("OCI-Subject %q, want %s", r.header.Get("OCI-Subject"), sd.Digest)
		}
	}
	index := func(r result) ocispec.Index {
		t.Helper()
		want(t, r, http.StatusOK, "")
		if r.header.Get("Content-Type") != ocispec.MediaTypeImageIndex {
			t.Fatalf("Content-Type %q", r.header.Get("Content-Type"))
		}
		var idx ocispec.Index
		if err := json.Unmarshal(r.body, &idx); err != nil || idx.SchemaVersion != 2 || idx.MediaType != ocispec.MediaTypeImageIndex {
			t.Fatalf("not an index: %s (%v)", r.body, err)
		}
		return idx
	}
	all := index(do(t, "GET", ts.URL+"/v2/r/referrers/"+sd.Digest.String(), nil))
	if len(all.Manifests) != 2 {
		t.Fatalf("referrers: %v", all.Manifests)
	}
	types := map[digest.Digest]string{}
	for _, d := range all.Manifests {
		types[d.Digest] = d.ArtifactType
	}
	if types[digest.FromBytes(sig)] != "application/vnd.example.sig" || types[digest.FromBytes(sbom)] != ocispec.MediaTypeImageConfig {
		t.Fatalf("artifact types: %v", types)
	}
	r := do(t, "GET", ts.URL+"/v2/r/referrers/"+sd.Digest.String()+"?artifactType=application/vnd.example.sig", nil)
	filtered := index(r)
	if len(filtered.Manifests) != 1 || filtered.Manifests[0].Digest != digest.FromBytes(sig) || r.header.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered: %v %s", r.header, r.body)
	}
	empty := do(t, "GET", ts.URL+"/v2/r/referrers/"+digest.FromString("nothing").String(), nil)
	if idx := index(empty); idx.Manifests == nil || len(idx.Manifests) != 0 || !strings.Contains(string(empty.body), `"manifests":[]`) {
		t.Fatalf("empty referrers: %s", empty.body)
	}
}

func TestTagsPagination(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	man := imageManifest(t, []byte("c"), []byte("l"), nil, "")
	for _, tag := range []string{"e", "a", "d", "b", "c"} {
		want(t, pushManifest(t, ts, "r", tag, man, ocispec.MediaTypeImageManifest), http.StatusCreated, "")
	}
	var got []string
	next := "/v2/r/tags/list?n=2"
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		r := do(t, "GET", ts.URL+next, nil)
		want(t, r, http.StatusOK, "")
		var tl struct{ Tags []string }
		if err := json.Unmarshal(r.body, &tl); err != nil || len(tl.Tags) > 2 {
			t.Fatalf("page %s: %s", next, r.body)
		}
		got = append(got, tl.Tags...)
		next = ""
		if link := r.header.Get("Link"); link != "" {
			next = strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
		}
	}
	if strings.Join(got, ",") != "a,b,c,d,e" {
		t.Fatalf("paged tags %v", got)
	}
	r := do(t, "GET", ts.URL+"/v2/r/tags/list?last=c", nil)
	if string(r.body) != `{"name":"r","tags":["d","e"]}` || r.header.Get("Link") != "" {
		t.Fatalf("last=c: %s %v", r.body, r.header)
	}
	if r := do(t, "GET", ts.URL+"/v2/r/tags/list?n=0", nil); string(r.body) != `{"name":"r","tags":[]}` {
		t.Fatalf("n=0: %s", r.body)
	}
	want(t, do(t, "GET", ts.URL+"/v2/nothing/tags/list", nil), http.StatusNotFound, "NAME_UNKNOWN")
}

func TestMount(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	b := []byte("shared layer")
	d := pushBlob(t, ts, "src", b)
	r := do(t, "POST", ts.URL+"/v2/dst/blobs/uploads/?mount="+d.String()+"&from=src", nil)
	want(t, r, http.StatusCreated, "")
	if r.header.Get("Location") != "/v2/dst/blobs/"+d.String() || r.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("mount headers %v", r.header)
	}
	if got := do(t, "GET", ts.URL+r.header.Get("Location"), nil); !bytes.Equal(got.body, b) {
		t.Fatalf("mounted blob: %d %q", got.status, got.body)
	}
	want(t, do(t, "POST", ts.URL+"/v2/anon/blobs/uploads/?mount="+d.String(), nil), http.StatusCreated, "")
	// Missing in the source repository: a plain upload session instead.
	r = do(t, "POST", ts.URL+"/v2/dst2/blobs/uploads/?mount="+d.String()+"&from=elsewhere", nil)
	want(t, r, http.StatusAccepted, "")
	if !strings.HasPrefix(r.header.Get("Location"), "/v2/dst2/blobs/uploads/") {
		t.Fatalf("fallback Location %q", r.header.Get("Location"))
	}
	want(t, do(t, "GET", ts.URL+"/v2/dst2/blobs/"+d.String(), nil), http.StatusNotFound, "BLOB_UNKNOWN")
}

// keyedSource keeps repositories under "reg/<repo>", like *node.Node.
type keyedSource struct{ storeSource }

func (keyedSource) Key(n node.Name) string { return "reg/" + n.Repo }

func (k keyedSource) Manifest(ctx context.Context, n node.Name, ref string, head bool) (node.Manifest, error) {
	return k.storeSource.Manifest(ctx, node.Name{Repo: k.Key(n)}, ref, head)
}

func TestPushUsesSourceKey(t *testing.T) {
	t.Parallel()
	store := blobstore.NewMemory()
	ts := newTestServer(t, func(o *Options) { o.Store, o.Source = store, keyedSource{storeSource{store}} })
	man := imageManifest(t, []byte("c"), []byte("l"), nil, "")
	want(t, pushManifest(t, ts, "app", "v1", man, ocispec.MediaTypeImageManifest), http.StatusCreated, "")
	if d, err := store.Resolve(t.Context(), "reg/app", "v1"); err != nil || d != digest.FromBytes(man) {
		t.Fatalf("tag under source key: %v %v", d, err)
	}
	want(t, do(t, "GET", ts.URL+"/v2/app/manifests/v1", nil), http.StatusOK, "")
}
