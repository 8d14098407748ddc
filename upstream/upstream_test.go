package upstream_test

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// origin is a real go-containerregistry registry served twice: push takes
// test content, srv answers the client through an optional interceptor and
// records every request it sees.
type origin struct {
	push, srv *httptest.Server
	mu        sync.Mutex
	seen      []seen
	intercept func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
}

type seen struct {
	method, path, query string
	header              http.Header
}

func newOrigin(t *testing.T) *origin {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	o := &origin{push: httptest.NewServer(reg)}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		o.seen = append(o.seen, seen{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone()})
		icp := o.intercept
		o.mu.Unlock()
		if icp != nil && icp(w, r, reg) {
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(o.push.Close)
	t.Cleanup(o.srv.Close)
	return o
}

// setIntercept installs (or with nil removes) a request interceptor.
func (o *origin) setIntercept(f func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.intercept = f
}

// count is how many requests with method hit a path containing part.
func (o *origin) count(method, part string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, s := range o.seen {
		if s.method == method && strings.Contains(s.path, part) {
			n++
		}
	}
	return n
}

func (o *origin) requests() []seen {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]seen(nil), o.seen...)
}

func (o *origin) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.seen = nil
}

// pushImage writes img to repo:tag through the push server.
func (o *origin) pushImage(t *testing.T, repo, tag string, img v1.Image) {
	t.Helper()
	o.push1(t, repo, tag, func(ref name.Reference, opt remote.Option) error { return remote.Write(ref, img, opt) })
}

func (o *origin) pushIndex(t *testing.T, repo, tag string, idx v1.ImageIndex) {
	t.Helper()
	o.push1(t, repo, tag, func(ref name.Reference, opt remote.Option) error { return remote.WriteIndex(ref, idx, opt) })
}

// push1 runs write against repo:tag of the push server on a transport of
// its own, closed afterwards.
func (o *origin) push1(t *testing.T, repo, tag string, write func(name.Reference, remote.Option) error) {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(o.push.URL, "http://") + "/" + repo + ":" + tag)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	if err := write(ref, remote.WithTransport(tr)); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func randomImage(t *testing.T, size, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// newClient returns a client whose only upstream is o under the name ns.
func newClient(t *testing.T, o upstream.Options) *upstream.Client {
	t.Helper()
	c, err := upstream.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func originClient(t *testing.T, o *origin, ns string) *upstream.Client {
	t.Helper()
	return newClient(t, upstream.Options{Registries: []upstream.Registry{{Name: ns, URL: o.srv.URL}}})
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func readAll(t *testing.T, rc io.ReadCloser) []byte {
	t.Helper()
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var bg = context.Background()
