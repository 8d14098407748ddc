package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testBlob(t testing.TB, size int64) benchkit.Blob {
	t.Helper()
	b, err := benchkit.MakeBlob(filepath.Join(t.TempDir(), "blob"), size)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStats(t *testing.T) {
	tests := []struct {
		name         string
		xs           []float64
		median, best float64
	}{
		{name: "empty"},
		{name: "odd", xs: []float64{3, 1, 2}, median: 2, best: 3},
		{name: "even", xs: []float64{4, 1, 3, 2}, median: 2.5, best: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if m, b := stats(tt.xs); m != tt.median || b != tt.best {
				t.Fatalf("stats(%v) = %v, %v; want %v, %v", tt.xs, m, b, tt.median, tt.best)
			}
		})
	}
}

// TestServers runs the real comparison servers as the benchmark does:
// a blob pushed to docker-registry and served by nginx comes back whole,
// and every process is gone after StopAll.
func TestServers(t *testing.T) {
	const regBin = "/usr/bin/docker-registry"
	if _, err := os.Stat(regBin); err != nil {
		t.Skip("docker-registry not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := testBlob(t, 3<<20+17)
	dir := t.TempDir()
	ps := &benchkit.Procs{}
	defer ps.StopAll()
	client := benchkit.NewClient()
	defer client.CloseIdleConnections()

	reg, base, err := startRegistry(ctx, ps, regBin, filepath.Join(dir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := benchkit.Get(ctx, client, blobURL(base, b), b.Size, b.Digest, false, 5*time.Second); err == nil {
		t.Fatal("blob served before it was pushed")
	}
	if err := push(ctx, client, base, b, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := benchkit.Get(ctx, client, blobURL(base, b), b.Size, b.Digest, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	started := map[*benchkit.Proc]string{reg: base + "/v2/"}
	if ng, err := exec.LookPath("/usr/sbin/nginx"); err == nil {
		p, nbase, err := startNginx(ctx, ps, ng, filepath.Join(dir, "nginx"), b.Path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := benchkit.Get(ctx, client, nbase+"/blob", b.Size, b.Digest, true, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		started[p] = nbase + "/"
	}
	ps.StopAll()
	for p, url := range started {
		select {
		case <-p.Done():
		default:
			t.Fatalf("%s (pid %d) still running after StopAll", p.Name, p.PID())
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			t.Fatalf("%s still answers at %s after StopAll", p.Name, url)
		}
	}
}

// BenchmarkServeFile shows what sendfile is worth on loopback: the same
// file served by http.ServeContent over an *os.File (the kernel copies,
// as imgmesh and nginx do) and over a plain io.ReadSeeker (a user-space
// copy, as distribution's filesystem driver does). The client reads into a
// 1 MiB buffer as the benchmark does; "+sha256" adds a client that hashes.
func BenchmarkServeFile(b *testing.B) {
	bl := testBlob(b, 64<<20)
	cases := []struct {
		name   string
		wrap   bool
		verify bool
	}{
		{name: "sendfile"},
		{name: "copy", wrap: true},
		{name: "sendfile+sha256", verify: true},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				f, err := os.Open(bl.Path)
				if err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				defer f.Close()
				var rs io.ReadSeeker = f
				if c.wrap {
					rs = struct{ io.ReadSeeker }{f} // hides ReaderFrom/WriterTo paths
				}
				http.ServeContent(w, r, "blob", time.Time{}, rs)
			}))
			defer srv.Close()
			client := benchkit.NewClient()
			defer client.CloseIdleConnections()
			b.SetBytes(bl.Size)
			for b.Loop() {
				if _, err := benchkit.Get(context.Background(), client, srv.URL, bl.Size, bl.Digest, c.verify, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
