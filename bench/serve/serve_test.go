package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testBlob(t testing.TB, size int64) blob {
	t.Helper()
	b, err := makeBlob(filepath.Join(t.TempDir(), "blob"), size)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGet proves a measurement fails rather than reports a transfer that
// was short, wrong or refused.
func TestGet(t *testing.T) {
	b := testBlob(t, 1<<20)
	data, err := os.ReadFile(b.path)
	if err != nil {
		t.Fatal(err)
	}
	wrong := bytes.Clone(data)
	wrong[len(wrong)/2] ^= 1
	tests := []struct {
		name    string
		handler http.HandlerFunc
		verify  bool
		wantErr bool
	}{
		{name: "whole body", handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(data) }, verify: true},
		{name: "whole body unverified", handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(data) }},
		{name: "body cut short", wantErr: true, handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:len(data)/2]) // the server ends the response early
		}},
		{name: "smaller blob", wantErr: true, handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(data[1:]) }},
		{name: "wrong bytes verified", verify: true, wantErr: true, handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(wrong) }},
		{name: "not found", wantErr: true, handler: func(w http.ResponseWriter, _ *http.Request) { http.NotFound(w, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			client := newClient()
			defer client.CloseIdleConnections()
			d, err := get(context.Background(), client, srv.URL, b, tt.verify, 10*time.Second)
			if (err != nil) != tt.wantErr {
				t.Fatalf("get: err %v, want error %v", err, tt.wantErr)
			}
			if err == nil && d <= 0 {
				t.Fatalf("elapsed %v", d)
			}
		})
	}
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

func TestReadMemory(t *testing.T) {
	m, err := readMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS < 1<<20 || m.Peak < m.RSS {
		t.Fatalf("memory %+v: want RSS ≥ 1 MiB and peak ≥ RSS", m)
	}
	if _, err := readMemory(1 << 30); err == nil {
		t.Fatal("memory of a process that does not exist: no error")
	}
}

// TestServers runs the real comparison servers as the benchmark does:
// a blob pushed to docker-registry and served by nginx comes back whole,
// and every process is gone after stopAll.
func TestServers(t *testing.T) {
	const regBin = "/usr/bin/docker-registry"
	if _, err := os.Stat(regBin); err != nil {
		t.Skip("docker-registry not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := testBlob(t, 3<<20+17)
	dir := t.TempDir()
	ps := &procs{}
	defer ps.stopAll()
	client := newClient()
	defer client.CloseIdleConnections()

	reg, base, err := startRegistry(ctx, ps, regBin, filepath.Join(dir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := get(ctx, client, blobURL(base, b), b, false, 5*time.Second); err == nil {
		t.Fatal("blob served before it was pushed")
	}
	if err := push(ctx, client, base, b, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := get(ctx, client, blobURL(base, b), b, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	started := map[*proc]string{reg: base + "/v2/"}
	if ng, err := exec.LookPath("/usr/sbin/nginx"); err == nil {
		p, nbase, err := startNginx(ctx, ps, ng, filepath.Join(dir, "nginx"), b.path)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := get(ctx, client, nbase+"/blob", b, true, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		started[p] = nbase + "/"
	}
	ps.stopAll()
	for p, url := range started {
		select {
		case <-p.done:
		default:
			t.Fatalf("%s (pid %d) still running after stopAll", p.name, p.pid())
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			t.Fatalf("%s still answers at %s after stopAll", p.name, url)
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
				f, err := os.Open(bl.path)
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
			client := newClient()
			defer client.CloseIdleConnections()
			b.SetBytes(bl.size)
			for b.Loop() {
				if _, err := get(context.Background(), client, srv.URL, bl, c.verify, time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
