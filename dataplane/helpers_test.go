package dataplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/blobstore"
)

// readOnlyStore passes the read calls a data-plane server may make to the
// real store and counts them. Every other Store method is the nil embedded
// interface: calling one panics, which fails the request and the test.
type readOnlyStore struct {
	blobstore.Store // nil on purpose
	real            *blobstore.Files
	mu              sync.Mutex
	calls           map[string]int
}

func (s *readOnlyStore) count(name string) {
	s.mu.Lock()
	s.calls[name]++
	s.mu.Unlock()
}

func (s *readOnlyStore) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

func (s *readOnlyStore) Open(ctx context.Context, d digest.Digest) (blobstore.Blob, error) {
	s.count("Open")
	return s.real.Open(ctx, d)
}

func (s *readOnlyStore) Stat(ctx context.Context, d digest.Digest) (blobstore.Info, error) {
	s.count("Stat")
	return s.real.Stat(ctx, d)
}

func (s *readOnlyStore) Resolve(ctx context.Context, repo, tag string) (digest.Digest, error) {
	s.count("Resolve")
	return s.real.Resolve(ctx, repo, tag)
}

// fixture is a real store behind a real data-plane server on 127.0.0.1.
type fixture struct {
	files *blobstore.Files
	store *readOnlyStore
	srv   *httptest.Server
	reg   *prometheus.Registry
	key   []byte
}

func newFixture(t testing.TB, key []byte) *fixture {
	t.Helper()
	files, err := blobstore.Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { files.Close() })
	f := &fixture{
		files: files,
		store: &readOnlyStore{real: files, calls: map[string]int{}},
		reg:   prometheus.NewRegistry(),
		key:   key,
	}
	f.srv = httptest.NewServer(NewServer(ServerOptions{Store: f.store, Key: key, Registerer: f.reg}))
	t.Cleanup(f.srv.Close)
	return f
}

// put commits b to the store and returns its digest.
func (f *fixture) put(t testing.TB, b []byte) digest.Digest {
	t.Helper()
	w, err := f.files.NewWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, bytes.NewReader(b)); err != nil {
		w.Cancel()
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	if _, err := w.Commit(context.Background(), int64(len(b)), d); err != nil {
		t.Fatal(err)
	}
	return d
}

// client returns a client of the fixture; its idle connections close with t.
func (f *fixture) client(t testing.TB, key []byte) *Client {
	c := NewClient(ClientOptions{Key: key, NodeID: "12D3KooWTestNode"})
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// result is a raw response read whole.
type result struct {
	status int
	header http.Header
	body   []byte
}

// raw sends one request with the plain transport; hdr is name, value pairs.
func raw(t *testing.T, method, url string, hdr ...string) result {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}
