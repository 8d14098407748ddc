package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstreamRegistry is Debian's docker-registry (the origin) with a counting
// proxy in front of it; nodes are pointed at the proxy, tests push straight
// to the registry so the proxy counts only what nodes ask for.
type upstreamRegistry struct {
	direct string // host:port of docker-registry itself (for pushes)
	proxy  *countingProxy
}

// Host is the proxy's host:port: the upstream as nodes see it.
func (u *upstreamRegistry) Host() string { return u.proxy.Host() }

// URL is the proxy's base URL, for --upstream NAME=URL.
func (u *upstreamRegistry) URL() string { return "http://" + u.proxy.Host() }

const registryConfig = `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:%d
`

// startUpstream runs docker-registry with filesystem storage in a temp dir
// and the counting proxy in front of it.
func startUpstream(t *testing.T) *upstreamRegistry {
	t.Helper()
	bin := requireTool(t, "docker-registry")
	dir := t.TempDir()
	port := freePort(t)
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, registryConfig, filepath.Join(dir, "storage"), port), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startProc(t, "docker-registry", nil, bin, "serve", cfg)
	p.tailN = 8 // its 404s for every pushed blob are noise
	direct := fmt.Sprintf("127.0.0.1:%d", port)
	c := httpClient(t)
	poll(t, "docker-registry", 20*time.Second, p, func() error {
		resp, err := c.Get("http://" + direct + "/v2/")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	})
	return &upstreamRegistry{direct: direct, proxy: newCountingProxy(t, "http://"+direct)}
}

// proxyMode is what the counting proxy does with a request.
type proxyMode int32

const (
	modeHonest    proxyMode = iota // forward as is
	modeDown503                    // answer 503 without forwarding
	modeDownClose                  // close the connection without answering
	modeLying                      // forward, but flip one byte of every blob body
)

// blobPath matches GET /v2/<repo>/blobs/<digest>.
var blobPath = regexp.MustCompile(`^/v2/(.+)/blobs/(sha256:[a-f0-9]{64})$`)

// countingProxy is a reverse proxy that records what passed through it.
type countingProxy struct {
	srv  *httptest.Server
	mode atomic.Int32

	mu        sync.Mutex
	requests  int                      // every request, any mode
	hits      map[string]int           // requests per path, any method
	gets      map[string]int           // GET count per path
	blobGets  map[string]int           // GET count per blob digest
	blobBytes map[string]int64         // blob body bytes sent, per digest
	agents    map[string]int           // User-Agent -> requests
	gates     map[string]chan struct{} // digest -> closed when its body may finish
}

func newCountingProxy(t *testing.T, target string) *countingProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	cp := &countingProxy{
		hits:      map[string]int{},
		gets:      map[string]int{},
		blobGets:  map[string]int{},
		blobBytes: map[string]int64{},
		agents:    map[string]int{},
		gates:     map[string]chan struct{}{},
	}
	tr := &http.Transport{Proxy: nil, DisableCompression: true}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = tr
	rp.FlushInterval = -1
	rp.ModifyResponse = cp.modifyResponse
	rp.ErrorLog = nil
	cp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cp.record(r)
		switch proxyMode(cp.mode.Load()) {
		case modeDown503:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAVAILABLE","message":"upstream down (test)"}]}`)
			return
		case modeDownClose:
			if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		cp.srv.CloseClientConnections()
		cp.srv.Close()
		tr.CloseIdleConnections()
	})
	return cp
}

// Host is the proxy's host:port.
func (cp *countingProxy) Host() string { return cp.srv.Listener.Addr().String() }

// SetMode switches what the proxy does with the next requests.
func (cp *countingProxy) SetMode(m proxyMode) { cp.mode.Store(int32(m)) }

func (cp *countingProxy) record(r *http.Request) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.requests++
	cp.agents[r.UserAgent()]++
	cp.hits[r.URL.Path]++
	if r.Method != http.MethodGet {
		return
	}
	cp.gets[r.URL.Path]++
	if m := blobPath.FindStringSubmatch(r.URL.Path); m != nil {
		cp.blobGets[m[2]]++
	}
}

// modifyResponse counts (and in lying mode corrupts) blob bodies.
func (cp *countingProxy) modifyResponse(resp *http.Response) error {
	m := blobPath.FindStringSubmatch(resp.Request.URL.Path)
	if resp.Request.Method != http.MethodGet || m == nil || resp.StatusCode/100 != 2 {
		return nil
	}
	body := resp.Body
	if proxyMode(cp.mode.Load()) == modeLying {
		flipAt := int64(0)
		if resp.ContentLength > 0 {
			flipAt = resp.ContentLength / 2
		}
		body = &corruptReader{ReadCloser: body, flipAt: flipAt}
	}
	cp.mu.Lock()
	gate := cp.gates[m[2]]
	cp.mu.Unlock()
	if gate != nil && resp.ContentLength > 1 {
		body = &gatedReader{ReadCloser: body, left: resp.ContentLength / 2, gate: gate, ctx: resp.Request.Context()}
	}
	resp.Body = &countingReader{ReadCloser: body, add: func(n int) {
		cp.mu.Lock()
		cp.blobBytes[m[2]] += int64(n)
		cp.mu.Unlock()
	}}
	return nil
}

// Gate makes the proxy send only the first half of blob d's body until
// the returned release func is called (idempotent; also called at cleanup).
func (cp *countingProxy) Gate(t *testing.T, d string) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	cp.mu.Lock()
	cp.gates[d] = ch
	cp.mu.Unlock()
	var once sync.Once
	release = func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

// proxyStats is a snapshot of the proxy's counters.
type proxyStats struct {
	Requests  int
	Hits      map[string]int
	Gets      map[string]int
	BlobGets  map[string]int
	BlobBytes map[string]int64
	Agents    map[string]int
}

// TotalBlobBytes is the sum of blob body bytes sent for every digest.
func (s proxyStats) TotalBlobBytes() int64 {
	var n int64
	for _, b := range s.BlobBytes {
		n += b
	}
	return n
}

// TotalBlobGets is the number of blob GETs for every digest.
func (s proxyStats) TotalBlobGets() int {
	var n int
	for _, c := range s.BlobGets {
		n += c
	}
	return n
}

// Stats copies the counters.
func (cp *countingProxy) Stats() proxyStats {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	s := proxyStats{
		Requests:  cp.requests,
		Hits:      make(map[string]int, len(cp.hits)),
		Gets:      make(map[string]int, len(cp.gets)),
		BlobGets:  make(map[string]int, len(cp.blobGets)),
		BlobBytes: make(map[string]int64, len(cp.blobBytes)),
		Agents:    make(map[string]int, len(cp.agents)),
	}
	for k, v := range cp.hits {
		s.Hits[k] = v
	}
	for k, v := range cp.gets {
		s.Gets[k] = v
	}
	for k, v := range cp.blobGets {
		s.BlobGets[k] = v
	}
	for k, v := range cp.blobBytes {
		s.BlobBytes[k] = v
	}
	for k, v := range cp.agents {
		s.Agents[k] = v
	}
	return s
}

type countingReader struct {
	io.ReadCloser
	add func(int)
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.add(n)
	}
	return n, err
}

// gatedReader passes `left` bytes, then blocks until gate is closed.
type gatedReader struct {
	io.ReadCloser
	left int64
	gate <-chan struct{}
	ctx  context.Context
}

func (r *gatedReader) Read(p []byte) (int, error) {
	if r.left <= 0 && r.gate != nil {
		select {
		case <-r.gate:
			r.gate = nil
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
	if r.gate != nil && int64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.ReadCloser.Read(p)
	r.left -= int64(n)
	return n, err
}

// corruptReader flips the bits of the byte at offset flipAt.
type corruptReader struct {
	io.ReadCloser
	off, flipAt int64
}

func (r *corruptReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if i := r.flipAt - r.off; i >= 0 && i < int64(n) {
		p[i] ^= 0xff
	}
	r.off += int64(n)
	return n, err
}

// deadRegistry is an HTTP server that counts requests and answers 503 to
// all: an upstream no request should ever reach.
type deadRegistry struct {
	srv  *httptest.Server
	hits atomic.Int64
}

func newDeadRegistry(t *testing.T) *deadRegistry {
	t.Helper()
	d := &deadRegistry{}
	d.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		d.hits.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(d.srv.Close)
	return d
}
