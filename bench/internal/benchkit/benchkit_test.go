package benchkit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testBlob(t testing.TB, size int64) Blob {
	t.Helper()
	b, err := MakeBlob(filepath.Join(t.TempDir(), "blob"), size)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// errWrong in TestGetSplit: any error will do.
var errWrong = errors.New("any error")

// TestGet proves a measurement fails rather than reports a transfer that
// was short, wrong or refused.
func TestGet(t *testing.T) {
	b := testBlob(t, 1<<20)
	data, err := os.ReadFile(b.Path)
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
			client := NewClient()
			defer client.CloseIdleConnections()
			d, err := Get(context.Background(), client, srv.URL, b.Size, b.Digest, tt.verify, 10*time.Second)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Get: err %v, want error %v", err, tt.wantErr)
			}
			if err == nil && d <= 0 {
				t.Fatalf("elapsed %v", d)
			}
		})
	}
}

func TestReadMemory(t *testing.T) {
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS < 1<<20 || m.Peak < m.RSS {
		t.Fatalf("memory %+v: want RSS ≥ 1 MiB and peak ≥ RSS", m)
	}
	if _, err := ReadMemory(1 << 30); err == nil {
		t.Fatal("memory of a process that does not exist: no error")
	}
}

// TestGetSplit proves a transfer is reported only when it delivered the
// whole, right blob, with the time before the tail taken.
func TestGetSplit(t *testing.T) {
	data := bytes.Repeat([]byte("imgmesh"), 1<<16)
	sum := sha256.Sum256(data)
	dgst := "sha256:" + hex.EncodeToString(sum[:])
	tests := []struct {
		name    string
		handler http.HandlerFunc
		wantErr error
	}{
		{name: "whole body", handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(data) }},
		{name: "short", wantErr: ErrShort, handler: func(w http.ResponseWriter, _ *http.Request) { w.Write(data[1:]) }},
		{name: "cut", handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			w.Write(data[:10])
		}, wantErr: io.ErrUnexpectedEOF},
		{name: "wrong bytes", wantErr: errWrong, handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Write(append(bytes.Clone(data[:len(data)-1]), 'x'))
		}},
		{name: "not found", wantErr: errWrong, handler: func(w http.ResponseWriter, _ *http.Request) { http.NotFound(w, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			c := NewClient()
			defer c.CloseIdleConnections()
			got, err := GetSplit(context.Background(), c, srv.URL, int64(len(data)), dgst, true, 5*time.Second)
			switch {
			case tt.wantErr == errWrong && err == nil:
				t.Fatal("got no error")
			case tt.wantErr != nil && tt.wantErr != errWrong && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			case tt.wantErr == nil && err != nil:
				t.Fatal(err)
			}
			if err == nil && (got.BeforeTail <= 0 || got.BeforeTail > got.All) {
				t.Errorf("timing %+v", got)
			}
		})
	}
}

// TestReadAllMark proves the mark fires when all but the last byte have
// arrived, before the last one is sent.
func TestReadAllMark(t *testing.T) {
	data := bytes.Repeat([]byte("x"), 3<<20)
	pr, pw := io.Pipe()
	marked := make(chan struct{})
	type result struct {
		n   int64
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := ReadAll(pr, nil, int64(len(data)-1), func() { close(marked) })
		done <- result{n, err}
	}()
	if _, err := pw.Write(data[:len(data)-1]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-marked:
	case <-time.After(5 * time.Second):
		t.Fatal("mark not called with all but the last byte read")
	}
	pw.Write(data[len(data)-1:])
	pw.Close()
	if r := <-done; r.err != nil || r.n != int64(len(data)) {
		t.Fatalf("readAll = %d, %v; want %d bytes", r.n, r.err, len(data))
	}
}

func TestTailMark(t *testing.T) {
	tests := []struct {
		name       string
		size, want int64
	}{
		{name: "big body: all but a MiB", size: 256 << 20, want: 256<<20 - TailBytes},
		{name: "small body: all but a byte", size: 4096, want: 4095},
		{name: "one byte", size: 1, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TailMark(tt.size); got != tt.want {
				t.Errorf("TailMark(%d) = %d, want %d", tt.size, got, tt.want)
			}
		})
	}
}

func TestMakeBlob(t *testing.T) {
	b := testBlob(t, 3<<20+5)
	data, err := os.ReadFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if int64(len(data)) != b.Size || b.Digest != "sha256:"+hex.EncodeToString(sum[:]) {
		t.Fatalf("blob %+v does not describe its %d-byte file", b, len(data))
	}
	if other := testBlob(t, b.Size); other.Digest == b.Digest {
		t.Fatal("two blobs with the same bytes: not random")
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		want float64
	}{
		{name: "empty", want: 0},
		{name: "one", xs: []float64{7}, want: 7},
		{name: "odd, unsorted", xs: []float64{3, 1, 2}, want: 2},
		{name: "even: mean of the middle two", xs: []float64{4, 1, 3, 2}, want: 2.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			if got := Median(in); got != tt.want {
				t.Errorf("Median(%v) = %v, want %v", tt.xs, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("Median reordered its input: %v", in)
				}
			}
		})
	}
}

func TestGbps(t *testing.T) {
	tests := []struct {
		name string
		size int64
		d    time.Duration
		want float64
	}{
		{name: "1e9 bytes in a second", size: 1e9, d: time.Second, want: 1},
		{name: "1 GiB in half a second", size: 1 << 30, d: time.Second / 2, want: 2.147483648},
		{name: "no time", size: 1 << 20, d: 0, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Gbps(tt.size, tt.d); math.Abs(got-tt.want) > 1e-9 {
				t.Errorf("Gbps(%d, %v) = %v, want %v", tt.size, tt.d, got, tt.want)
			}
		})
	}
}

func TestSizeString(t *testing.T) {
	tests := []struct {
		name string
		n    int64
		want string
	}{
		{name: "GiB", n: 2 << 30, want: "2 GiB"},
		{name: "MiB", n: 256 << 20, want: "256 MiB"},
		{name: "KiB", n: 4096, want: "4 KiB"},
		{name: "not whole", n: 1<<20 + 1, want: "1048577 B"},
		{name: "zero", n: 0, want: "0 B"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SizeString(tt.n); got != tt.want {
				t.Errorf("SizeString(%d) = %q, want %q", tt.n, got, tt.want)
			}
		})
	}
}

func TestWriteResults(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "out")
	res := struct {
		Machine Machine `json:"machine"`
	}{Machine{NProc: 2, CPU: "c"}}
	err := WriteResults(dir, func(w io.Writer) { io.WriteString(w, "# report\n") }, res)
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil || string(md) != "# report\n" {
		t.Fatalf("results.md = %q, %v", md, err)
	}
	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil || !strings.Contains(string(js), `"nproc": 2`) || !strings.HasSuffix(string(js), "}\n") {
		t.Fatalf("results.json = %q, %v", js, err)
	}
}

// TestProcs proves a started process is stopped by StopAll and a
// readiness wait fails at once, with its log, when the process exits.
func TestProcs(t *testing.T) {
	dir := t.TempDir()
	ps := &Procs{}
	defer ps.StopAll()
	p, err := ps.Start("sleeper", filepath.Join(dir, "sleep.log"), "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	q, err := ps.Start("quitter", filepath.Join(dir, "quit.log"), "sh", "-c", "echo bye; exit 3")
	if err != nil {
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	err = WaitReady(context.Background(), q, "http://127.0.0.1:"+strconv.Itoa(port)+"/", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "quitter exited") || !strings.Contains(err.Error(), "bye") {
		t.Fatalf("WaitReady on an exited process: %v", err)
	}
	ps.StopAll()
	select {
	case <-p.Done():
	default:
		t.Fatalf("%s (pid %d) still running after StopAll", p.Name, p.PID())
	}
}
