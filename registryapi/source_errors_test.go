package registryapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// fakeSource serves one blob with a chosen source label and body, or fails.
type fakeSource struct {
	err      error
	source   string
	data     []byte
	failAt   int // >0: the body fails after this many bytes; <0: at once, with failErr
	failErr  error
	arriving bool // a download in flight, not a stored blob
}

func (f fakeSource) Manifest(context.Context, node.Name, string, bool) (node.Manifest, error) {
	return node.Manifest{}, f.err
}

func (f fakeSource) Tags(context.Context, node.Name) ([]string, error) { return nil, f.err }

func (f fakeSource) Blob(_ context.Context, _ node.Name, d digest.Digest, head bool) (node.Content, error) {
	if f.err != nil {
		return node.Content{}, f.err
	}
	c := node.Content{Digest: d, Size: int64(len(f.data)), Source: f.source, Arriving: f.arriving}
	if !head {
		c.Body = &failingBody{ReadSeeker: bytes.NewReader(f.data), failAt: f.failAt, err: f.failErr}
	}
	return c, nil
}

// failingBody is a blob body whose reads fail past failAt bytes, like a
// download whose upstream lied.
type failingBody struct {
	io.ReadSeeker
	failAt int
	read   int
	err    error
}

func (b *failingBody) Read(p []byte) (int, error) {
	if b.failAt < 0 {
		return 0, b.err
	}
	if b.failAt > 0 {
		if b.read >= b.failAt {
			return 0, errors.New("digest mismatch from upstream")
		}
		p = p[:min(len(p), b.failAt-b.read)]
	}
	n, err := b.ReadSeeker.Read(p)
	b.read += n
	return n, err
}

func (b *failingBody) Close() error { return nil }

func TestSourceErrors(t *testing.T) {
	t.Parallel()
	d := digest.FromString("x").String()
	tests := []struct {
		name   string
		err    error
		path   string
		status int
		code   string
	}{
		{"blob not found", fmt.Errorf("nobody: %w", blobstore.ErrNotFound), "/v2/r/blobs/" + d, 404, "BLOB_UNKNOWN"},
		{"manifest not found", fmt.Errorf("nobody: %w", blobstore.ErrNotFound), "/v2/r/manifests/latest", 404, "MANIFEST_UNKNOWN"},
		{"tags not found", fmt.Errorf("nobody: %w", blobstore.ErrNotFound), "/v2/r/tags/list", 404, "NAME_UNKNOWN"},
		{"blob upstream down", fmt.Errorf("dial: %w", node.ErrUpstream), "/v2/r/blobs/" + d, 503, "UNAVAILABLE"},
		{"manifest upstream down", fmt.Errorf("dial: %w", node.ErrUpstream), "/v2/r/manifests/latest", 503, "UNAVAILABLE"},
		{"internal error", errors.New("disk on fire"), "/v2/r/manifests/" + d, 500, "UNKNOWN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := newTestServer(t, func(o *Options) { o.Source = fakeSource{err: tt.err} })
			want(t, do(t, "GET", ts.URL+tt.path, nil), tt.status, tt.code)
		})
	}
}

func TestReadErrorCutsResponse(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("abcdefgh"), 64<<10) // 512 KiB
	ts := newTestServer(t, func(o *Options) { o.Source = fakeSource{source: "upstream", data: data, failAt: 100 << 10} })
	url := ts.URL + "/v2/r/blobs/" + digest.FromBytes(data).String()
	resp, err := testClient.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil || len(got) >= len(data) {
		t.Fatalf("client read %d of %d bytes with err %v; want a cut response", len(got), len(data), err)
	}
	// The server keeps serving.
	want(t, do(t, "GET", ts.URL+"/v2/", nil), http.StatusOK, "")
}

// TestReadErrorBeforeTheFirstByte: a body that fails before sending
// anything (a download whose upstream went away, or that filled the disk)
// answers with the error, not an empty reply.
func TestReadErrorBeforeTheFirstByte(t *testing.T) {
	t.Parallel()
	data := bytes.Repeat([]byte("abcdefgh"), 1<<10)
	url := "/v2/r/blobs/" + digest.FromBytes(data).String()
	for _, c := range []struct {
		err    error
		status int
		code   string
	}{
		{fmt.Errorf("ingest write: %w", blobstore.ErrNoSpace), http.StatusInsufficientStorage, "UNAVAILABLE"},
		{fmt.Errorf("blob r: %w: connection refused", node.ErrUpstream), http.StatusServiceUnavailable, "UNAVAILABLE"},
	} {
		ts := newTestServer(t, func(o *Options) {
			o.Source = fakeSource{source: "upstream", data: data, failAt: -1, failErr: c.err, arriving: true}
		})
		want(t, do(t, "GET", ts.URL+url, nil), c.status, c.code)
	}
}

func TestBlobMetrics(t *testing.T) {
	t.Parallel()
	data := []byte(strings.Repeat("z", 1000))
	store := blobstore.NewMemory()
	sw := switchSource{}
	sw.set(storeSource{store})
	ts := newTestServer(t, func(o *Options) { o.Store = store; o.Source = sw })
	d := pushBlob(t, ts, "r", data)
	for range 3 {
		want(t, do(t, "GET", ts.URL+"/v2/r/blobs/"+d.String(), nil), http.StatusOK, "")
	}
	want(t, do(t, "GET", ts.URL+"/v2/r/blobs/"+d.String(), nil, "Range", "bytes=0-99"), http.StatusPartialContent, "")
	sw.set(fakeSource{source: "upstream", data: data})
	want(t, do(t, "GET", ts.URL+"/v2/r/blobs/"+d.String(), nil), http.StatusOK, "")

	r := do(t, "GET", ts.URL+"/metrics", nil)
	for _, s := range []string{
		`imgmesh_registry_blob_bytes_served_total{source="local"} 3100`,
		`imgmesh_registry_blob_bytes_served_total{source="upstream"} 1000`,
		`imgmesh_registry_blob_hit_ratio 0.8`,
		`imgmesh_registry_requests_total{code="206",method="GET",route="blob"} 1`,
		`imgmesh_registry_blob_requests_total{source="upstream"} 1`,
		`imgmesh_registry_request_duration_seconds_count{method="POST",route="upload_start"} 1`,
	} {
		if !strings.Contains(string(r.body), s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// switchSource forwards to the Source set last.
type switchSource struct{ p *atomic.Pointer[Source] }

func (w *switchSource) set(s Source) {
	if w.p == nil {
		w.p = new(atomic.Pointer[Source])
	}
	w.p.Store(&s)
}

func (w switchSource) Manifest(ctx context.Context, n node.Name, ref string, head bool) (node.Manifest, error) {
	return (*w.p.Load()).Manifest(ctx, n, ref, head)
}

func (w switchSource) Blob(ctx context.Context, n node.Name, d digest.Digest, head bool) (node.Content, error) {
	return (*w.p.Load()).Blob(ctx, n, d, head)
}

func (w switchSource) Tags(ctx context.Context, n node.Name) ([]string, error) {
	return (*w.p.Load()).Tags(ctx, n)
}
