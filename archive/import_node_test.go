package archive

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestImportNodeDown: an unreachable node is a one-line error.
func TestImportNodeDown(t *testing.T) {
	t.Parallel()
	dir := writeLayout(t, ociImage(t, 1, 1<<10, "amd64"), map[string]string{AnnotationRefName: "docker.io/library/a:1"}, nil, nil)
	tn := startTestNode(t)
	url := tn.url
	_, err := Import(t.Context(), dir, ImportOptions{Node: "http://127.0.0.1:1"})
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want a one-line error", err)
	}
	t.Logf("error: %v", err)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: url + "/some/path"}); err == nil {
		t.Fatal("a node URL with a path was accepted")
	}
	// A login in a URL that does not parse is not echoed.
	if _, err := Import(t.Context(), dir, ImportOptions{Node: "tech:s3cret@127.0.0.1:5000"}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("node URL without a scheme: %v; want an error without the password", err)
	}
}

// TestImportNodeHangs: a node that answers the first request and then
// never again fails the import with a one-line error, not a hang.
func TestImportNodeHangs(t *testing.T) {
	defer func(d time.Duration) { nodeResponseTimeout = d }(nodeResponseTimeout)
	nodeResponseTimeout = 300 * time.Millisecond
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	dir := writeLayout(t, ociImage(t, 1, 1<<10, "amd64"), map[string]string{AnnotationRefName: "docker.io/library/a:1"}, nil, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := Import(ctx, dir, ImportOptions{Node: srv.URL})
	if err == nil || ctx.Err() != nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("import to a hung node: %v (context: %v), want a one-line error before the context ends", err, ctx.Err())
	}
	t.Logf("error: %v", err)
}

// TestImportSendsBlobsOnce: names in several repositories of one registry
// send each blob once (later repositories mount it), and an import of
// what the node already holds sends no blob at all.
func TestImportSendsBlobsOnce(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 3, 16<<10, "amd64")
	dir, _, _ := dockerSave(t, img, []string{"example.com/a:1", "example.com/b:1", "example.com/c/d:1"})
	tn := startTestNode(t)
	rt := &countingTransport{next: &http.Transport{}}
	defer rt.next.CloseIdleConnections()
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url, Transport: rt}); err != nil {
		t.Fatal(err)
	}
	if want := 4; rt.uploads != want { // the config and 3 layers
		t.Errorf("%d blob uploads, want %d", rt.uploads, want)
	}
	for _, repo := range []string{"a", "b", "c/d"} {
		tn.pullAll(t, "example.com", repo, "1")
	}
	rt.uploads = 0
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url, Transport: rt}); err != nil {
		t.Fatal(err)
	}
	if rt.uploads != 0 {
		t.Errorf("importing again sent %d blobs, want none", rt.uploads)
	}
}

// countingTransport counts requests, and blob upload requests that carry
// data.
type countingTransport struct {
	next     *http.Transport
	mu       sync.Mutex
	requests int
	uploads  int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.requests++
	if r.Method == http.MethodPatch || (r.Method == http.MethodPut && r.ContentLength > 0 && strings.Contains(r.URL.Path, "/blobs/uploads/")) {
		c.uploads++
	}
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}
