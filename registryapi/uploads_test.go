package registryapi

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

// countingStore counts writers opened and cancelled.
type countingStore struct {
	*blobstore.Memory
	opened, cancelled atomic.Int64
}

func (c *countingStore) NewWriter(ctx context.Context) (blobstore.Writer, error) {
	w, err := c.Memory.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	c.opened.Add(1)
	return &countingWriter{Writer: w, c: c}, nil
}

type countingWriter struct {
	blobstore.Writer
	c    *countingStore
	once sync.Once
}

func (w *countingWriter) Cancel() error {
	w.once.Do(func() { w.c.cancelled.Add(1) })
	return w.Writer.Cancel()
}

// startSession opens an upload session and returns its URL.
func startSession(t *testing.T, ts *testServer, repo string) string {
	t.Helper()
	r := do(t, "POST", ts.URL+"/v2/"+repo+"/blobs/uploads/", nil)
	want(t, r, http.StatusAccepted, "")
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/"+repo+"/blobs/uploads/") || r.header.Get("Range") != "0-0" ||
		r.header.Get("Docker-Upload-UUID") == "" {
		t.Fatalf("session start headers: %v", r.header)
	}
	return ts.URL + loc
}

func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	blob := bytes.Repeat([]byte("0123456789"), 300)
	d := digest.FromBytes(blob)
	u := startSession(t, ts, "r")

	r := do(t, "PATCH", u, blob[:1000], "Content-Range", "0-999")
	want(t, r, http.StatusAccepted, "")
	if r.header.Get("Range") != "0-999" {
		t.Fatalf("Range after first chunk %q", r.header.Get("Range"))
	}
	u = ts.URL + r.header.Get("Location")
	// Out of order (a gap, then an overlap): 416 with the current range, session kept.
	for _, cr := range []string{"1500-1999", "500-1499"} {
		r = do(t, "PATCH", u, blob[:1000], "Content-Range", cr)
		want(t, r, http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID")
		if r.header.Get("Range") != "0-999" || r.header.Get("Location") == "" {
			t.Fatalf("416 headers %v", r.header)
		}
	}
	r = do(t, "GET", u, nil)
	want(t, r, http.StatusNoContent, "")
	if r.header.Get("Range") != "0-999" {
		t.Fatalf("status Range %q", r.header.Get("Range"))
	}
	// A chunk without Content-Range is appended (streamed).
	want(t, do(t, "PATCH", u, blob[1000:2000]), http.StatusAccepted, "")
	// The last chunk comes with the PUT.
	r = do(t, "PUT", u+"?digest="+d.String(), blob[2000:], "Content-Range", fmt.Sprintf("2000-%d", len(blob)-1))
	want(t, r, http.StatusCreated, "")
	if r.header.Get("Location") != "/v2/r/blobs/"+d.String() || r.header.Get("Docker-Content-Digest") != d.String() {
		t.Fatalf("finish headers %v", r.header)
	}
	if got := do(t, "GET", ts.URL+"/v2/r/blobs/"+d.String(), nil); !bytes.Equal(got.body, blob) {
		t.Fatalf("blob after chunked upload: %d bytes", len(got.body))
	}
	want(t, do(t, "GET", u, nil), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	if n := ts.api.uploads.count(); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
}

func TestUploadCancelAndDigestMismatch(t *testing.T) {
	t.Parallel()
	cs := &countingStore{Memory: blobstore.NewMemory()}
	ts := newTestServer(t, func(o *Options) { o.Store, o.Source = cs, storeSource{cs} })
	before := snap(t, cs)

	u := startSession(t, ts, "r")
	want(t, do(t, "PATCH", u, []byte("some bytes")), http.StatusAccepted, "")
	want(t, do(t, "DELETE", u, nil), http.StatusNoContent, "")
	want(t, do(t, "PATCH", u, []byte("more")), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")

	u = startSession(t, ts, "r")
	want(t, do(t, "PATCH", u, []byte("some bytes")), http.StatusAccepted, "")
	wrong := digest.FromString("other bytes")
	want(t, do(t, "PUT", u+"?digest="+wrong.String(), nil), http.StatusBadRequest, "DIGEST_INVALID")
	want(t, do(t, "GET", u, nil), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	want(t, do(t, "GET", ts.URL+"/v2/r/blobs/"+wrong.String(), nil), http.StatusNotFound, "BLOB_UNKNOWN")

	// A session used from another repository is unknown there.
	u = startSession(t, ts, "r")
	want(t, do(t, "GET", strings.Replace(u, "/v2/r/", "/v2/q/", 1), nil), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	// A PUT without ?digest= is refused, and the session stays for a PUT
	// that has one (distribution does the same).
	want(t, do(t, "PUT", u, nil), http.StatusBadRequest, "DIGEST_INVALID")
	want(t, do(t, "GET", u, nil), http.StatusNoContent, "")
	want(t, do(t, "DELETE", u, nil), http.StatusNoContent, "")

	if !snap(t, cs).equal(before) {
		t.Fatal("store changed by failed uploads")
	}
	if o, c := cs.opened.Load(), cs.cancelled.Load(); o != 3 || c != 3 {
		t.Fatalf("writers opened %d, cancelled %d; want 3, 3", o, c)
	}
}

func TestUploadSessionsBoundedAndSwept(t *testing.T) {
	t.Parallel()
	cs := &countingStore{Memory: blobstore.NewMemory()}
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ts := newTestServer(t, func(o *Options) {
		o.Store, o.Source = cs, storeSource{cs}
		o.MaxUploads, o.UploadIdleTimeout, o.now = 2, time.Minute, clock
	})
	first := startSession(t, ts, "r")
	startSession(t, ts, "r")
	want(t, do(t, "POST", ts.URL+"/v2/r/blobs/uploads/", nil), http.StatusTooManyRequests, "TOOMANYREQUESTS")

	mu.Lock()
	now = now.Add(30 * time.Second)
	mu.Unlock()
	want(t, do(t, "PATCH", first, []byte("keeps it alive")), http.StatusAccepted, "")
	mu.Lock()
	now = now.Add(45 * time.Second) // second idle 75s, first 45s
	mu.Unlock()
	startSession(t, ts, "r") // sweeps the second
	want(t, do(t, "GET", first, nil), http.StatusNoContent, "")
	if c := cs.cancelled.Load(); c != 1 {
		t.Fatalf("cancelled %d writers, want 1", c)
	}
	_ = ts.api.Close()
	if o, c := cs.opened.Load(), cs.cancelled.Load(); c != o {
		t.Fatalf("after Close: opened %d, cancelled %d", o, c)
	}
}

// rawRequest sends a request with a body shorter than its Content-Length,
// half-closes the connection and reads the response.
func rawRequest(t *testing.T, ts *testServer, method, path string, declared int, body []byte) result {
	t.Helper()
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", method, path, declared)
	_, _ = conn.Write(body)
	_ = conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: buf.Bytes()}
}

func TestShortBodyFailsUpload(t *testing.T) {
	t.Parallel()
	cs := &countingStore{Memory: blobstore.NewMemory()}
	ts := newTestServer(t, func(o *Options) { o.Store, o.Source = cs, storeSource{cs} })
	before := snap(t, cs)
	body := []byte("only ten b")

	u := startSession(t, ts, "r")
	path := strings.TrimPrefix(u, ts.URL)
	want(t, rawRequest(t, ts, "PATCH", path, 100, body), http.StatusBadRequest, "SIZE_INVALID")
	want(t, do(t, "GET", u, nil), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")

	d := digest.FromBytes(body)
	want(t, rawRequest(t, ts, "POST", "/v2/r/blobs/uploads/?digest="+d.String(), 100, body), http.StatusBadRequest, "SIZE_INVALID")
	want(t, do(t, "HEAD", ts.URL+"/v2/r/blobs/"+d.String(), nil), http.StatusNotFound, "")

	// Content-Length disagreeing with Content-Range, or a Content-Range
	// that does not parse: refused before the body is read, so the session
	// stays as it was and the right chunk goes in.
	u = startSession(t, ts, "r")
	want(t, do(t, "PATCH", u, body, "Content-Range", "0-99"), http.StatusBadRequest, "SIZE_INVALID")
	r := do(t, "PATCH", u, body, "Content-Range", "abc")
	want(t, r, http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID")
	if !strings.Contains(string(r.body), "START-END") {
		t.Errorf("a malformed Content-Range: %s; want the reason to say the form", r.body)
	}
	want(t, do(t, "PATCH", u, body, "Content-Range", "0-9"), http.StatusAccepted, "")
	want(t, do(t, "DELETE", u, nil), http.StatusNoContent, "")

	if !snap(t, cs).equal(before) {
		t.Fatal("store changed")
	}
	if o, c := cs.opened.Load(), cs.cancelled.Load(); o != c {
		t.Fatalf("writers opened %d, cancelled %d", o, c)
	}
}

// TestAbandonedUploadSwept: a session a client leaves without DELETE (an
// import that failed half way) is swept by the server itself once idle, with
// no new upload to trigger it: its URL answers 404 and its temp file and file
// descriptor are gone.
func TestAbandonedUploadSwept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	store, err := blobstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	ts := newTestServer(t, func(o *Options) {
		o.Store, o.Source = store, storeSource{store}
		o.now, o.sweepEvery = clock, 5*time.Millisecond
	})
	ingest := filepath.Join(dir, "ingest")

	u := startSession(t, ts, "r")
	want(t, do(t, "PATCH", u, []byte("half an import")), http.StatusAccepted, "")
	if n, fds := ingestUse(t, ingest); n != 1 || (runtime.GOOS == "linux" && fds != 1) {
		t.Fatalf("during the upload: %d temp files, %d open", n, fds)
	}

	mu.Lock()
	now = now.Add(15*time.Minute + time.Second) // the default idle timeout passes
	mu.Unlock()
	deadline := time.Now().Add(3 * time.Second)
	for n, fds := ingestUse(t, ingest); n+fds > 0; n, fds = ingestUse(t, ingest) {
		if time.Now().After(deadline) {
			t.Fatalf("abandoned upload not swept: %d temp files, %d open", n, fds)
		}
		time.Sleep(5 * time.Millisecond)
	}
	want(t, do(t, "GET", u, nil), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	want(t, do(t, "PATCH", u, []byte("more")), http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN")
	if n := ts.api.uploads.count(); n != 0 {
		t.Fatalf("%d sessions left", n)
	}
}

// ingestUse counts the temp files in dir and, on Linux, the file descriptors
// of this process open on them.
func ingestUse(t *testing.T, dir string) (files, fds int) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	links, _ := filepath.Glob("/proc/self/fd/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, dir+string(filepath.Separator)) {
			fds++
		}
	}
	return len(entries), fds
}

// TestPushToAFullStore: a push that fills the node's disk is told so, with
// a 507 and the reason, not blamed on its body; a manifest too. Nothing
// becomes visible, and a smaller blob still goes in.
func TestPushToAFullStore(t *testing.T) {
	t.Parallel()
	fs := &storetest.FullDisk{Store: blobstore.NewMemory()}
	fs.Room.Store(1 << 10)
	ts := newTestServer(t, func(o *Options) { o.Store, o.Source = fs, storeSource{fs} })
	big := bytes.Repeat([]byte("x"), 4<<10)
	d := digest.FromBytes(big)

	r := rawRequest(t, ts, "POST", "/v2/r/blobs/uploads/?digest="+d.String(), len(big), big)
	want(t, r, http.StatusInsufficientStorage, "UNAVAILABLE")
	if !strings.Contains(string(r.body), "storage full") {
		t.Errorf("monolithic push to a full disk: %s; want it to say the storage is full", r.body)
	}
	u := startSession(t, ts, "r")
	want(t, do(t, "PATCH", u, big), http.StatusInsufficientStorage, "UNAVAILABLE")
	want(t, do(t, "HEAD", ts.URL+"/v2/r/blobs/"+d.String(), nil), http.StatusNotFound, "")

	fs.Room.Store(0)
	m := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"` + digest.FromString("{}").String() + `","size":2},"layers":[]}`)
	want(t, do(t, "PUT", ts.URL+"/v2/r/manifests/v1", m, "Content-Type", "application/vnd.oci.image.manifest.v1+json"), http.StatusInsufficientStorage, "UNAVAILABLE")

	fs.Room.Store(1 << 20) // space freed
	want(t, rawRequest(t, ts, "POST", "/v2/r/blobs/uploads/?digest="+d.String(), len(big), big), http.StatusCreated, "")
}
