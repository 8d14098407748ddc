package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/registryapi"
	"github.com/imgmesh/imgmesh/upstream"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		goleak.IgnoreAnyFunction("github.com/dgraph-io/ristretto/v2.(*defaultPolicy[...]).processItems"))
}

func discardLogger() *log.Logger { return log.New(io.Discard, "", 0) }

const ns = "origin.test"

// newNode starts a node whose only upstream is o, over a real file store.
func newNode(t *testing.T, o *origin) (*node.Node, blobstore.Store) {
	t.Helper()
	return newNodeOver(t, o, nil)
}

// newNodeOver is newNode with the node seeing the file store through wrap
// (a store that fails on purpose); it returns the file store itself.
func newNodeOver(t *testing.T, o *origin, wrap func(blobstore.Store) blobstore.Store) (*node.Node, blobstore.Store) {
	t.Helper()
	store, err := blobstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	up, err := upstream.New(upstream.Options{
		Registries: []upstream.Registry{{Name: ns, URL: o.srv.URL}},
		Restrict:   true,
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := blobstore.Store(store)
	if wrap != nil {
		seen = wrap(store)
	}
	n := node.New(node.Options{Store: seen, Upstream: up, TagTimeout: time.Second, IdleTimeout: 5 * time.Second})
	t.Cleanup(func() {
		n.Close()
		store.Close()
	})
	return n, store
}

func readBlob(ctx context.Context, n *node.Node, repo string, d digest.Digest) ([]byte, node.Content, error) {
	c, err := n.Blob(ctx, node.Name{NS: ns, Repo: repo}, d, false)
	if err != nil {
		return nil, c, err
	}
	defer c.Body.Close()
	b, err := io.ReadAll(c.Body)
	return b, c, err
}

// readAtOnce starts a read of blob d of repo through each of nodes at
// once, each checked against want; wait returns the first failure once
// every read ended.
func readAtOnce(ctx context.Context, nodes []*node.Node, repo string, d digest.Digest, want []byte) (wait func() error) {
	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		wg.Go(func() {
			got, _, err := readBlob(ctx, n, repo, d)
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("blob %s: wrong bytes", d)
			}
			errs <- err
		})
	}
	return func() error {
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				return err
			}
		}
		return nil
	}
}

func TestPullThroughThenLocal(t *testing.T) {
	o := newOrigin(t)
	img, layers := pushImage(t, o, "team/app", "v1", 3<<20, 1000)
	n, _ := newNode(t, o)
	ctx := context.Background()
	want, _ := img.Digest()

	m, err := n.Manifest(ctx, node.Name{NS: ns, Repo: "team/app"}, "v1", false)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest.String() != want.String() {
		t.Fatalf("tag resolved to %s, upstream has %s", m.Digest, want)
	}
	raw, _ := img.RawManifest()
	if !bytes.Equal(m.Body, raw) {
		t.Fatal("manifest bytes differ from upstream's")
	}
	for _, l := range layers {
		d, _ := l.Digest()
		for i, wantSource := range []string{"upstream", "local"} {
			got, c, err := readBlob(ctx, n, "team/app", digest.Digest(d.String()))
			if err != nil {
				t.Fatalf("read %d: %v", i, err)
			}
			if !bytes.Equal(got, layerBytes(t, l)) {
				t.Fatalf("read %d of %s: wrong bytes", i, d)
			}
			if c.Source != wantSource {
				t.Errorf("read %d source = %s, want %s", i, c.Source, wantSource)
			}
		}
		if g := o.gets(d); g != 1 {
			t.Errorf("upstream served %s %d times, want once", d, g)
		}
	}
}

func TestConcurrentColdReadersShareOneFetch(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 4<<20)
	n, _ := newNode(t, o)
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])

	readers := []*node.Node{n, n, n, n, n, n, n, n}
	if err := readAtOnce(context.Background(), readers, "team/app", digest.Digest(d.String()), want)(); err != nil {
		t.Fatal(err)
	}
	if g := o.gets(d); g != 1 {
		t.Fatalf("upstream served the blob %d times to 8 concurrent readers, want 1", g)
	}
}

func TestStreamsBeforeUpstreamFinishes(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 8<<20)
	gate := make(chan struct{})
	o.mu.Lock()
	o.gate, o.gateAfter = gate, 1<<20
	o.mu.Unlock()
	n, _ := newNode(t, o)
	d, _ := layers[0].Digest()
	want := layerBytes(t, layers[0])

	c, err := n.Blob(context.Background(), node.Name{NS: ns, Repo: "team/app"}, digest.Digest(d.String()), false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Body.Close()
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(c.Body, first); err != nil { // upstream is paused after 1 MiB
		t.Fatalf("first MiB not streamed while upstream paused: %v", err)
	}
	close(gate)
	rest, err := io.ReadAll(c.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, rest...), want) {
		t.Fatal("wrong bytes")
	}
}

func TestLyingUpstreamStoresNothing(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 2<<20)
	n, store := newNode(t, o)
	d, _ := layers[0].Digest()
	o.corrupt.Store(true)

	got, _, err := readBlob(context.Background(), n, "team/app", digest.Digest(d.String()))
	if err == nil {
		t.Fatal("reading a corrupted blob succeeded")
	}
	if len(got) >= 2<<20 {
		t.Fatalf("client received all %d bytes of a wrong blob", len(got))
	}
	if _, err := store.Stat(context.Background(), digest.Digest(d.String())); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("store has the corrupted blob: %v", err)
	}
	o.corrupt.Store(false)
	got, _, err = readBlob(context.Background(), n, "team/app", digest.Digest(d.String()))
	if err != nil || !bytes.Equal(got, layerBytes(t, layers[0])) {
		t.Fatalf("after upstream recovered: err=%v", err)
	}
}

func TestResumesBrokenBody(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 4<<20)
	n, _ := newNode(t, o)
	d, _ := layers[0].Digest()
	o.breakAt.Store(1 << 20)

	got, _, err := readBlob(context.Background(), n, "team/app", digest.Digest(d.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, layerBytes(t, layers[0])) {
		t.Fatal("wrong bytes after resume")
	}
	if o.rangeGets() != 1 {
		t.Fatalf("expected one ranged resume request, got %d", o.rangeGets())
	}
}

func TestUpstreamDownServesLocalTag(t *testing.T) {
	o := newOrigin(t)
	img, layers := pushImage(t, o, "team/app", "v1", 1000)
	n, _ := newNode(t, o)
	ctx := context.Background()
	name := node.Name{NS: ns, Repo: "team/app"}
	if _, err := n.Manifest(ctx, name, "v1", false); err != nil {
		t.Fatal(err)
	}
	d, _ := layers[0].Digest()
	if _, _, err := readBlob(ctx, n, "team/app", digest.Digest(d.String())); err != nil {
		t.Fatal(err)
	}
	o.down.Store(true)
	m, err := n.Manifest(ctx, name, "v1", false)
	if err != nil {
		t.Fatalf("tag while upstream down: %v", err)
	}
	want, _ := img.Digest()
	if m.Digest.String() != want.String() {
		t.Fatalf("got %s want %s", m.Digest, want)
	}
	if _, _, err := readBlob(ctx, n, "team/app", digest.Digest(d.String())); err != nil {
		t.Fatalf("blob while upstream down: %v", err)
	}
	if _, err := n.Manifest(ctx, name, "never-pulled", false); err == nil {
		t.Fatal("unknown tag while upstream down should fail")
	}
}

func TestMissingEverywhere(t *testing.T) {
	o := newOrigin(t)
	n, _ := newNode(t, o)
	ctx := context.Background()
	d := digest.FromString("nobody has this")
	if _, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, false); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("blob: got %v, want ErrNotFound", err)
	}
	if _, err := n.Manifest(ctx, node.Name{NS: ns, Repo: "team/app"}, "nope", false); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("manifest: got %v, want ErrNotFound", err)
	}
	o.down.Store(true)
	if _, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, false); !errors.Is(err, node.ErrUpstream) {
		t.Fatalf("blob with upstream down: got %v, want ErrUpstream", err)
	}
	// A HEAD (a client about to push asks for every blob and manifest)
	// gets "unknown": pushes work with the upstream down.
	if _, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, true); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("blob HEAD with upstream down: got %v, want ErrNotFound", err)
	}
	for _, ref := range []string{"nope", d.String()} {
		if _, err := n.Manifest(ctx, node.Name{NS: ns, Repo: "team/app"}, ref, true); !errors.Is(err, blobstore.ErrNotFound) {
			t.Fatalf("manifest HEAD %s with upstream down: got %v, want ErrNotFound", ref, err)
		}
	}
	// A tag nobody here knows, with upstream down: the answer is "upstream
	// failed" (503), not "no such manifest" (404), as for a blob.
	_, err := n.Manifest(ctx, node.Name{NS: ns, Repo: "team/app"}, "nope", false)
	if !errors.Is(err, node.ErrUpstream) || errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("tag with upstream down: got %v, want ErrUpstream", err)
	}
	// An upstream that refuses access answered: Docker Hub says 401 to an
	// anonymous client for a repository it does not have (a typo), and
	// that stays "no such manifest".
	o.down.Store(false)
	o.deny.Store(true)
	if _, err := n.Manifest(ctx, node.Name{NS: ns, Repo: "typo/app"}, "latest", false); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("tag the upstream refuses: got %v, want ErrNotFound", err)
	}
}

func TestLocalOnlyKeepsRepositoriesApart(t *testing.T) {
	store := blobstore.NewMemory()
	n := node.New(node.Options{Store: store})
	defer n.Close()
	ctx := context.Background()
	w, _ := store.NewWriter(ctx)
	w.Write([]byte("hello"))
	d := digest.FromString("hello")
	if _, err := w.Commit(ctx, 5, d); err != nil {
		t.Fatal(err)
	}
	store.Link(ctx, "a/one", d)
	if _, _, err := readBlob(ctx, n, "a/one", d); err == nil {
		t.Fatal("ns of a registry with no upstream must not resolve")
	}
	c, err := n.Blob(ctx, node.Name{Repo: "a/one"}, d, true)
	if err != nil || c.Size != 5 {
		t.Fatalf("linked blob: %v size %d", err, c.Size)
	}
	if _, err := n.Blob(ctx, node.Name{Repo: "b/two"}, d, true); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("unlinked repository sees the blob: %v", err)
	}
}

func TestEmptyAnswerIsNotACompleteBlob(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 1000)
	n, store := newNode(t, o)
	d, _ := layers[0].Digest()
	o.empty.Store(true) // 200 with Content-Length 0 for a 1000-byte blob
	got, _, err := readBlob(context.Background(), n, "team/app", digest.Digest(d.String()))
	if err == nil {
		t.Fatalf("an empty answer for a non-empty digest was served as a complete blob (%d bytes)", len(got))
	}
	if _, err := store.Stat(context.Background(), digest.Digest(d.String())); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("store has the empty blob: %v", err)
	}
}

// TestRangeOfABlobStillArrivingIsSentWhole: a client's range of a blob
// the node is still fetching gets the whole blob (a server may ignore
// Range), whose last byte waits for the digest: when the bytes turn out
// wrong the client sees a cut connection, never a complete-looking 206.
func TestRangeOfABlobStillArrivingIsSentWhole(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 2<<20)
	h, _ := layers[0].Digest()
	d := digest.Digest(h.String())
	gate := make(chan struct{})
	var open sync.Once
	release := func() { open.Do(func() { close(gate) }) }
	t.Cleanup(release) // before the origin closes: its handler waits at the gate
	o.gate, o.gateAfter = gate, 1<<20
	o.corrupt.Store(true)
	n, store := newNode(t, o)
	api := httptest.NewServer(registryapi.New(registryapi.Options{Source: n, Store: store}))
	t.Cleanup(api.Close)

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// An empty read of a body still arriving returns at once.
	c, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c.Body, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() { _, _ = c.Body.Read(nil); close(read) }()
	select {
	case <-read:
	case <-time.After(5 * time.Second):
		t.Fatal("Read of an empty buffer hangs on a blob still arriving")
	}
	c.Body.Close()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api.URL+"/v2/team/app/blobs/"+d.String()+"?ns="+ns, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Range", "bytes=0-99")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("range of a blob still arriving: status %d, want 200 with the whole blob", resp.StatusCode)
	}
	release() // the rest arrives; the digest fails
	if b, err := io.ReadAll(resp.Body); err == nil {
		t.Fatalf("read %d bytes of a blob that failed verification without an error", len(b))
	}
	if _, err := store.Stat(ctx, d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("the wrong blob is in the store: %v", err)
	}
}

// TestLoneNodeDownloadsThroughTheRateCap: on a node without a fleet, what
// it fetches from upstream passes the download cap (--max-download-rate)
// too, every byte of it.
func TestLoneNodeDownloadsThroughTheRateCap(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 3<<20)
	store, err := blobstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	up, err := upstream.New(upstream.Options{Registries: []upstream.Registry{{Name: ns, URL: o.srv.URL}}, Restrict: true})
	if err != nil {
		t.Fatal(err)
	}
	var capped atomic.Int64
	n := node.New(node.Options{Store: store, Upstream: up, IdleTimeout: 5 * time.Second,
		Throttle: func(_ context.Context, r io.Reader) io.Reader { return countingReader{r, &capped} }})
	defer n.Close()
	d, _ := layers[0].Digest()
	got, _, err := readBlob(context.Background(), n, "team/app", digest.Digest(d.String()))
	if err != nil {
		t.Fatal(err)
	}
	if c := capped.Load(); c != int64(len(got)) {
		t.Fatalf("%d of the blob's %d bytes passed the rate cap", c, len(got))
	}
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n.Add(int64(k))
	return k, err
}

// TestHeadDuringAFailingDownload: a HEAD that comes while another client's
// download of the blob waits on a failing upstream does not wait for that
// download: it gets "unknown" (a pushing client then uploads the blob)
// before the download has failed.
func TestHeadDuringAFailingDownload(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		if r.Method == http.MethodGet { // the upstream takes its time, then fails
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	store, err := blobstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	up, err := upstream.New(upstream.Options{Registries: []upstream.Registry{{Name: ns, URL: srv.URL}}, Restrict: true})
	if err != nil {
		t.Fatal(err)
	}
	n := node.New(node.Options{Store: store, Upstream: up, TagTimeout: time.Second})
	defer n.Close()
	name, d := node.Name{NS: ns, Repo: "a/b"}, digest.FromString("pushed soon")
	pulled := make(chan error, 1)
	go func() {
		_, err := n.Blob(context.Background(), name, d, false) // another client's pull
		pulled <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !n.Busy(d) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_, err = n.Blob(context.Background(), name, d, true)
	select {
	case perr := <-pulled:
		t.Fatalf("the download ended (%v) before the HEAD answered", perr)
	default:
	}
	close(release)
	if !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("HEAD during a failing download: %v; want unknown", err)
	}
	if perr := <-pulled; !errors.Is(perr, node.ErrUpstream) {
		t.Fatalf("the download: %v, want ErrUpstream", perr)
	}
}
