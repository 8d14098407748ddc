package node_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// origin is a real registry (go-containerregistry's) behind a middleware
// that counts blob GETs and can misbehave on demand.
type origin struct {
	srv *httptest.Server

	mu        sync.Mutex
	blobGets  map[string]int // digest -> GETs
	ranges    int            // GETs with a Range header
	down      atomic.Bool    // answer 503 to everything
	deny      atomic.Bool    // answer 401 UNAUTHORIZED to everything but /v2/ (Docker Hub's answer to a repository it lacks)
	corrupt   atomic.Bool    // flip one byte of blob bodies
	empty     atomic.Bool    // answer blob GETs 200 with an empty body
	breakAt   atomic.Int64   // >0: cut blob bodies after this many bytes (once)
	served    atomic.Int64   // blob body bytes sent
	gate      chan struct{}  // non-nil: blob bodies pause halfway until closed
	gateAfter int64
}

func newOrigin(t *testing.T) *origin {
	t.Helper()
	o := &origin{blobGets: map[string]int{}}
	reg := registry.New(registry.Logger(discardLogger()))
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if o.deny.Load() && r.URL.Path != "/v2/" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
			return
		}
		if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/sha256:") {
			reg.ServeHTTP(w, r)
			return
		}
		d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		if o.empty.Load() {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusOK)
			return
		}
		o.mu.Lock()
		o.blobGets[d]++
		if r.Header.Get("Range") != "" {
			o.ranges++
		}
		gate, gateAfter := o.gate, o.gateAfter
		o.mu.Unlock()
		mw := &misbehave{ResponseWriter: w, o: o, cut: o.breakAt.Swap(0), gate: gate, gateAfter: gateAfter}
		reg.ServeHTTP(mw, r)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) host() string { return strings.TrimPrefix(o.srv.URL, "http://") }

func (o *origin) gets(d v1.Hash) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.blobGets[d.String()]
}

func (o *origin) rangeGets() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ranges
}

type misbehave struct {
	http.ResponseWriter
	o         *origin
	written   int64
	cut       int64
	gate      chan struct{}
	gateAfter int64
}

func (m *misbehave) Write(p []byte) (int, error) {
	if m.cut > 0 && m.written+int64(len(p)) > m.cut {
		k, _ := m.ResponseWriter.Write(p[:m.cut-m.written])
		m.written += int64(k)
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	if m.gate != nil && m.written+int64(len(p)) > m.gateAfter {
		k, _ := m.ResponseWriter.Write(p[:m.gateAfter-m.written])
		m.written += int64(k)
		m.ResponseWriter.(http.Flusher).Flush()
		<-m.gate
		m.gate = nil
		p = p[k:]
	}
	if m.o.corrupt.Load() && len(p) > 0 {
		p = bytes.Clone(p)
		p[0] ^= 0xff
	}
	k, err := m.ResponseWriter.Write(p)
	m.written += int64(k)
	m.o.served.Add(int64(k))
	return k, err
}

// pushImage writes an image with the given layer sizes to repo:tag.
func pushImage(t *testing.T, o *origin, repo, tag string, sizes ...int) (v1.Image, []v1.Layer) {
	t.Helper()
	var layers []v1.Layer
	img := empty.Image
	for _, size := range sizes {
		data := make([]byte, size)
		rand.Read(data)
		l := static.NewLayer(data, types.OCIUncompressedLayer)
		layers = append(layers, l)
		var err error
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	ref, err := name.ParseReference(o.host()+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	return img, layers
}

func layerBytes(t *testing.T, l v1.Layer) []byte {
	t.Helper()
	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
