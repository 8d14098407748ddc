package dataplane

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestServerBlob(t *testing.T) {
	f := newFixture(t, nil)
	blob := randomBytes(t, 1<<20+17)
	d := f.put(t, blob)
	size := int64(len(blob))
	missing := digest.FromString("nobody has this")

	for _, tc := range []struct {
		name       string
		method     string
		path       string
		rangeHdr   string
		status     int
		body       []byte // nil: not checked
		wantLength int64  // Content-Length; -1: not checked
		jsonError  bool
	}{
		{name: "full GET", method: "GET", path: "/blobs/" + d.String(), status: 200, body: blob, wantLength: size},
		{name: "range from offset", method: "GET", path: "/blobs/" + d.String(), rangeHdr: "bytes=1000-", status: 206, body: blob[1000:], wantLength: size - 1000},
		{name: "range in the middle", method: "GET", path: "/blobs/" + d.String(), rangeHdr: "bytes=5-9", status: 206, body: blob[5:10], wantLength: 5},
		{name: "last byte", method: "GET", path: "/blobs/" + d.String(), rangeHdr: "bytes=-1", status: 206, body: blob[size-1:], wantLength: 1},
		{name: "HEAD", method: "HEAD", path: "/blobs/" + d.String(), status: 200, body: []byte{}, wantLength: size},
		{name: "range past the end", method: "GET", path: "/blobs/" + d.String(), rangeHdr: "bytes=" + strconv.FormatInt(size, 10) + "-", status: 416, wantLength: -1, jsonError: true},
		{name: "not held", method: "GET", path: "/blobs/" + missing.String(), status: 404, wantLength: -1, jsonError: true},
		{name: "HEAD not held", method: "HEAD", path: "/blobs/" + missing.String(), status: 404, wantLength: -1},
		{name: "invalid digest", method: "GET", path: "/blobs/sha256:1234", status: 400, wantLength: -1, jsonError: true},
		{name: "unsupported algorithm", method: "GET", path: "/blobs/md5:d41d8cd98f00b204e9800998ecf8427e", status: 400, wantLength: -1, jsonError: true},
		{name: "unknown route", method: "GET", path: "/v2/", status: 404, wantLength: -1, jsonError: true},
		{name: "PUT refused", method: "PUT", path: "/blobs/" + d.String(), status: 405, wantLength: -1, jsonError: true},
		{name: "health", method: "GET", path: "/healthz", status: 200, wantLength: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.rangeHdr != "" {
				hdr = []string{"Range", tc.rangeHdr}
			}
			r := raw(t, tc.method, f.srv.URL+tc.path, hdr...)
			if r.status != tc.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tc.status)
			}
			if tc.body != nil && !bytes.Equal(r.body, tc.body) {
				t.Fatalf("body: %d bytes differ from the %d expected", len(r.body), len(tc.body))
			}
			if tc.wantLength >= 0 && r.header.Get("Content-Length") != strconv.FormatInt(tc.wantLength, 10) {
				t.Fatalf("Content-Length %q, want %d", r.header.Get("Content-Length"), tc.wantLength)
			}
			if tc.status < 300 && tc.path != "/healthz" && r.header.Get("Docker-Content-Digest") != d.String() {
				t.Fatalf("Docker-Content-Digest %q, want %s", r.header.Get("Docker-Content-Digest"), d)
			}
			if tc.jsonError {
				var e map[string]string
				if r.header.Get("Content-Type") != "application/json" || json.Unmarshal(r.body, &e) != nil || e["error"] == "" {
					t.Fatalf("error body %q (%s), want JSON {\"error\": ...}", r.body, r.header.Get("Content-Type"))
				}
			}
		})
	}
}

func TestServerTag(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	d := f.put(t, []byte(`{"schemaVersion":2}`))
	for _, rt := range [][2]string{{"docker.io/library/nginx", "1.27"}, {"localhost:5000/app", "v1"}, {"bare", "latest"}} {
		if err := f.files.Tag(ctx, rt[0], rt[1], d); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name   string
		path   string
		status int
	}{
		{name: "registry/repo:tag", path: "/tags/docker.io/library/nginx:1.27", status: 200},
		{name: "host with port", path: "/tags/localhost:5000/app:v1", status: 200},
		{name: "repository without slash", path: "/tags/bare:latest", status: 200},
		{name: "unknown tag", path: "/tags/docker.io/library/nginx:1.28", status: 404},
		{name: "unknown repository", path: "/tags/docker.io/library/redis:1.27", status: 404},
		{name: "no tag", path: "/tags/docker.io/library/nginx", status: 400},
		{name: "port but no tag", path: "/tags/localhost:5000/app", status: 400},
		{name: "empty tag", path: "/tags/docker.io/library/nginx:", status: 400},
		{name: "bad tag", path: "/tags/docker.io/library/nginx:-x", status: 400},
		{name: "empty component", path: "/tags/docker.io//nginx:1.27", status: 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := raw(t, "GET", f.srv.URL+tc.path)
			if r.status != tc.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tc.status)
			}
			if tc.status != 200 {
				return
			}
			var a struct{ Digest digest.Digest }
			if err := json.Unmarshal(r.body, &a); err != nil || a.Digest != d {
				t.Fatalf("answer %s, want digest %s", r.body, d)
			}
		})
	}
}

func TestServerOnlyReadsTheStore(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, nil)
	ctx := context.Background()
	d := f.put(t, randomBytes(t, 4096))
	if _, _, err := c.Blob(ctx, f.srv.URL, digest.FromString("absent"), 0); err == nil {
		t.Fatal("absent blob served")
	}
	rc, _, err := c.Blob(ctx, f.srv.URL, d, 10)
	if err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if _, err := c.Stat(ctx, f.srv.URL, d); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Tag(ctx, f.srv.URL, "docker.io/library/x", "1"); err == nil {
		t.Fatal("absent tag answered")
	}
	f.store.mu.Lock()
	defer f.store.mu.Unlock()
	// Any other call (Link, NewWriter, a fetch elsewhere…) would have
	// panicked in the nil embedded Store and failed a request above.
	if f.store.calls["Open"] != 3 || f.store.calls["Resolve"] != 1 {
		t.Fatalf("store calls %v, want 3 Open and 1 Resolve", f.store.calls)
	}
}

func TestServerMetrics(t *testing.T) {
	f := newFixture(t, nil)
	blob := randomBytes(t, 300_000)
	d := f.put(t, blob)
	raw(t, "GET", f.srv.URL+"/blobs/"+d.String())
	raw(t, "GET", f.srv.URL+"/blobs/"+d.String(), "Range", "bytes=100000-")
	raw(t, "GET", f.srv.URL+"/blobs/"+digest.FromString("x").String())
	m := newMetricsFrom(t, f)
	// Both bodies plus one small JSON error.
	if got, want := counter(t, m.bytes), float64(len(blob)+200_000); got < want || got > want+100 {
		t.Fatalf("bytes sent %v, want %v plus a small error body", got, want)
	}
	if got := counter(t, m.requests.WithLabelValues("blob", "206")); got != 1 {
		t.Fatalf("206 count %v, want 1", got)
	}
	if got := counter(t, m.requests.WithLabelValues("blob", "404")); got != 1 {
		t.Fatalf("404 count %v, want 1", got)
	}
}

// newMetricsFrom returns the collectors registered by f's server (a second
// registration returns the existing ones).
func newMetricsFrom(t *testing.T, f *fixture) *metrics {
	t.Helper()
	return newMetrics(f.reg)
}

// counter reads the value of a counter.
func counter(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil || m.Counter == nil {
		t.Fatalf("read counter: %v", err)
	}
	return m.Counter.GetValue()
}
