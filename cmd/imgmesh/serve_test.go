package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/internal/testlog"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// runningNode is `imgmesh serve` running in-process.
type runningNode struct {
	addr   string
	stderr *testlog.Buffer
	cancel context.CancelFunc
	done   chan int // exit code
}

// startServe runs `imgmesh serve args...` with JSON logs and waits for its
// "listening" line.
func startServe(t *testing.T, args ...string) *runningNode {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := &runningNode{stderr: &testlog.Buffer{}, cancel: cancel, done: make(chan int, 1)}
	c := &cli{
		ctx: ctx, stdout: io.Discard, stderr: n.stderr,
		lookupEnv: mapEnv(map[string]string{"HOME": t.TempDir()}), now: time.Now,
	}
	go func() { n.done <- c.run(append([]string{"serve", "--mesh=false", "--log-format", "json"}, args...)) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-n.done:
			t.Fatalf("serve exited with %d before listening: %s", code, n.stderr.String())
		default:
		}
		if addr := listeningAddr(n.stderr.String()); addr != "" {
			n.addr = addr
			return n
		}
		time.Sleep(5 * time.Millisecond) // polling the log, bounded by deadline
	}
	t.Fatalf("no listening line within 10s: %s", n.stderr.String())
	return nil
}

// listeningAddr finds the address of the "listening" log line.
func listeningAddr(logs string) string {
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "listening" {
			return l.Addr
		}
	}
	return ""
}

// stop shuts the node down and returns its exit code.
func (n *runningNode) stop(t *testing.T) int {
	t.Helper()
	n.cancel()
	select {
	case code := <-n.done:
		n.done <- code // for Cleanup
		return code
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop within 15s")
		return -1
	}
}

func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// TestServeWiresStoreAndAPI: a pushed blob is served, kept in --data-dir
// across a restart, and the operations endpoints answer.
func TestServeWiresStoreAndAPI(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	client := newClient(t)
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--upstream", "none")
	base := "http://" + n.addr

	for _, path := range []string{"/healthz", "/readyz", "/v2/"} {
		if code, body := get(t, client, base+path); code != http.StatusOK {
			t.Errorf("GET %s = %d %s", path, code, body)
		}
	}

	blob := []byte("imgmesh serve wiring test blob")
	dgst := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	resp, err := client.Post(base+"/v2/wiring/test/blobs/uploads/?digest="+dgst, "application/octet-stream", bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("monolithic push = %d, want 201", resp.StatusCode)
	}
	if code, body := get(t, client, base+"/v2/wiring/test/blobs/"+dgst); code != http.StatusOK || body != string(blob) {
		t.Fatalf("GET blob = %d %q", code, body)
	}

	code, metrics := get(t, client, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics = %d", code)
	}
	for _, m := range []string{"go_goroutines", "process_resident_memory_bytes", "imgmesh_"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}

	if code := n.stop(t); code != 0 {
		t.Fatalf("exit code after shutdown = %d: %s", code, n.stderr.String())
	}
	if entries, err := os.ReadDir(dataDir); err != nil || len(entries) == 0 {
		t.Fatalf("data dir %s empty after serving (%v)", dataDir, err)
	}

	// A new process on the same data dir still has the blob.
	n2 := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--upstream", "none")
	if code, body := get(t, client, "http://"+n2.addr+"/v2/wiring/test/blobs/"+dgst); code != http.StatusOK || body != string(blob) {
		t.Fatalf("after restart GET blob = %d %q", code, body)
	}
}

// TestServePullsFromConfiguredUpstream: --upstream NAME=URL reaches the
// upstream client: a tag pulled with ?ns=NAME comes from that registry.
func TestServePullsFromConfiguredUpstream(t *testing.T) {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(strings.TrimPrefix(up.URL, "http://") + "/library/demo:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push to upstream: %v", err)
	}
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	client := newClient(t)
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(),
		"--upstream", "plant.local:5000="+up.URL, "--restrict-upstreams")
	tests := []struct {
		name     string
		query    string
		wantCode int
	}{
		{name: "configured ns", query: "?ns=plant.local:5000", wantCode: http.StatusOK},
		{name: "no ns uses the first upstream", query: "", wantCode: http.StatusOK},
		{name: "unknown ns is refused when restricted", query: "?ns=ghcr.io", wantCode: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "http://"+n.addr+"/v2/library/demo/manifests/v1"+tt.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("status = %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if tt.wantCode == http.StatusOK && resp.Header.Get("Docker-Content-Digest") != want.String() {
				t.Errorf("digest = %q, want %s", resp.Header.Get("Docker-Content-Digest"), want)
			}
		})
	}
}

// TestServeStopsOnSIGTERM: the signal shuts the node down cleanly (exit 0).
func TestServeStopsOnSIGTERM(t *testing.T) {
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--upstream", "none")
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-n.done:
		n.done <- code
		if code != 0 {
			t.Fatalf("exit code %d after SIGTERM: %s", code, n.stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("SIGTERM did not stop serve")
	}
	if !strings.Contains(n.stderr.String(), "shutting down") {
		t.Errorf("no shutdown log line: %s", n.stderr.String())
	}
}

// TestServeBusyPort: a port in use is a one-line error, exit 1, and the
// data directory is not created.
func TestServeBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dataDir := filepath.Join(t.TempDir(), "data")
	code, _, stderr := runCLI(t, nil, "serve", "--mesh=false", "--listen", ln.Addr().String(), "--data-dir", dataDir, "--upstream", "none")
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "imgmesh: listen:") {
		t.Fatalf("exit %d, stderr %q; want 1 and one 'listen' line", code, stderr)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data dir created although the node could not listen (%v)", err)
	}
}

// TestServeLogsLibraryLinesAsJSON: a line a library prints with the
// standard log package (net/http does, about a misbehaving upstream) comes
// out as JSON with --log-format json. Not parallel: the standard logger is
// the process's.
func TestServeLogsLibraryLinesAsJSON(t *testing.T) {
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--upstream", "none", "--log-format", "json")
	log.Printf("Unsolicited response received on idle HTTP channel starting with %q", "AAAA")
	for _, line := range strings.Split(strings.TrimSpace(n.stderr.String()), "\n") {
		if strings.Contains(line, "Unsolicited response") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("library line not JSON: %s", line)
			}
			return
		}
	}
	t.Fatalf("library line not in the node's log:\n%s", n.stderr.String())
}

// TestNodeNameIsKept: a node without --node-name keeps the name it made on
// its first start, so a restart mid-rollout is the same fleet member.
func TestNodeNameIsKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := keptNodeName(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := keptNodeName(dir)
	if err != nil || again != first {
		t.Fatalf("second start: %q, %v; want %q", again, err, first)
	}
	other, err := keptNodeName(t.TempDir())
	if err != nil || other == first {
		t.Fatalf("another data dir: %q, %v; want a name other than %q", other, err, first)
	}
	if err := os.WriteFile(filepath.Join(dir, nodeNameFile), []byte("two words\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := keptNodeName(dir); err == nil || !strings.Contains(err.Error(), "--node-name") {
		t.Fatalf("a damaged name file: %v, want an error that names --node-name", err)
	}
}
