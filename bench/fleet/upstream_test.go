package fleet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
)

func testImage(t *testing.T, size int64, layers int) *Image {
	t.Helper()
	img, err := MakeImage("bench/fleet", "v1", size, layers, 42)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// client is an HTTP client whose idle connections close with the test.
func client(t *testing.T) *http.Client {
	t.Helper()
	tr := newTransport(nil)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestUpstreamServesARegistry proves go-containerregistry's client (the
// one the nodes use) pulls the image from Upstream, digests checked, and
// that every body byte it sent is counted.
func TestUpstreamServesARegistry(t *testing.T) {
	img := testImage(t, 3<<20, 3)
	up := NewUpstream(img, nil)
	srv := httptest.NewServer(up)
	defer srv.Close()
	c := client(t)

	ref, err := name.NewTag(strings.TrimPrefix(srv.URL, "http://")+"/bench/fleet:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ri, err := remote.Image(ref, remote.WithTransport(c.Transport), remote.WithContext(context.Background()))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := ri.Digest(); err != nil || d.String() != img.ManifestDigest.String() {
		t.Fatalf("manifest digest %v, %v; want %s", d, err, img.ManifestDigest)
	}
	layers, err := ri.Layers()
	if err != nil || len(layers) != 3 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	for _, l := range layers {
		rc, err := l.Compressed() // verifies the digest at EOF
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
	}
	if _, err := ri.RawConfigFile(); err != nil {
		t.Fatal(err)
	}
	// Every blob once, the manifest at least once (ggcr may GET it twice).
	if got, min := up.Served(), img.Size(); got < min || got > min+2*int64(len(img.Manifest)) {
		t.Errorf("served %d bytes, want the image's %d", got, min)
	}
}

func TestUpstreamRequests(t *testing.T) {
	img := testImage(t, 1<<20, 1)
	up := NewUpstream(img, nil)
	srv := httptest.NewServer(up)
	defer srv.Close()
	c := client(t)
	layer := img.Order[1]
	tests := []struct {
		name, method, path string
		header             map[string]string
		wantStatus         int
		wantBody           []byte // nil: not checked
		wantCounted        int64
	}{
		{name: "ping", method: "GET", path: "/v2/", wantStatus: 200, wantBody: []byte("{}"), wantCounted: 2},
		{name: "range of a blob", method: "GET", path: "/v2/bench/fleet/blobs/" + layer.String(),
			header: map[string]string{"Range": "bytes=100-199"}, wantStatus: 206, wantBody: img.Blobs[layer][100:200], wantCounted: 100},
		{name: "HEAD sends no body", method: "HEAD", path: "/v2/bench/fleet/blobs/" + layer.String(), wantStatus: 200, wantCounted: 0},
		{name: "manifest by digest", method: "GET", path: "/v2/bench/fleet/manifests/" + img.ManifestDigest.String(),
			wantStatus: 200, wantBody: img.Manifest, wantCounted: int64(len(img.Manifest))},
		{name: "unknown blob", method: "GET", path: "/v2/bench/fleet/blobs/" + digest.FromString("x").String(), wantStatus: 404},
		{name: "unknown tag", method: "GET", path: "/v2/bench/fleet/manifests/v2", wantStatus: 404},
		{name: "other repository", method: "GET", path: "/v2/other/manifests/v1", wantStatus: 404},
		{name: "push refused", method: "POST", path: "/v2/bench/fleet/blobs/uploads/", wantStatus: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up.Reset()
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantBody != nil && !bytes.Equal(body, tt.wantBody) {
				t.Errorf("body: %d bytes, not the %d expected", len(body), len(tt.wantBody))
			}
			if tt.wantStatus >= 400 && !strings.Contains(string(body), `"errors"`) {
				t.Errorf("error body %q is not OCI error JSON", body)
			}
			if tt.wantStatus < 400 && up.Served() != tt.wantCounted {
				t.Errorf("counted %d bytes, want %d", up.Served(), tt.wantCounted)
			}
		})
	}
}

// TestUpstreamLimit proves the in-process uplink holds all responses
// together to its rate.
func TestUpstreamLimit(t *testing.T) {
	img := testImage(t, 1<<20, 2) // two layers of 512 KiB
	srv := httptest.NewServer(NewUpstream(img, NewLimiter(2<<20, 64<<10)))
	defer srv.Close()
	c := client(t)
	start := time.Now()
	errc := make(chan error, 2)
	for _, d := range img.Order[1:] {
		go func() {
			resp, err := c.Get(srv.URL + "/v2/bench/fleet/blobs/" + d.String())
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			errc <- err
		}()
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	// 1 MiB at 2 MiB/s: half a second, less the burst.
	if el := time.Since(start); el < 400*time.Millisecond || el > 3*time.Second {
		t.Errorf("1 MiB through a 2 MiB/s uplink took %v, want about 0.5 s", el)
	}
}

func TestPull(t *testing.T) {
	img := testImage(t, 2<<20, 2)
	up := NewUpstream(img, nil)
	corrupt := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, img.Order[2].String()) {
			up.ServeHTTP(w, r)
			return
		}
		bad := bytes.Clone(img.Blobs[img.Order[2]])
		bad[len(bad)/2] ^= 1
		w.Write(bad)
	})
	short := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, img.Order[1].String()) {
			up.ServeHTTP(w, r)
			return
		}
		w.Write(img.Blobs[img.Order[1]][1:])
	})
	tests := []struct {
		name    string
		h       http.Handler
		want    digest.Digest
		wantErr error
	}{
		{name: "whole image verified", h: up, want: img.ManifestDigest},
		{name: "any manifest", h: up},
		{name: "manifest not the one wanted", h: up, want: digest.FromString("other"), wantErr: ErrVerify},
		{name: "a flipped bit in a layer", h: corrupt, want: img.ManifestDigest, wantErr: ErrVerify},
		{name: "a layer one byte short", h: short, want: img.ManifestDigest, wantErr: ErrVerify},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.h)
			defer srv.Close()
			var progress atomic.Int64
			n, err := Pull(context.Background(), client(t), srv.URL, img.Repo, img.Tag, tt.want, &progress, nil)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Pull: %v, want %v", err, tt.wantErr)
			}
			if err == nil && (n != img.Size() || progress.Load() != img.Size()) {
				t.Errorf("pulled %d bytes, progress %d; want %d", n, progress.Load(), img.Size())
			}
		})
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	var p atomic.Int64
	if _, err := Pull(context.Background(), client(t), srv.URL, img.Repo, img.Tag, "", &p, nil); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Pull from a registry without the image: %v", err)
	}
}

// TestPushPull proves Push stores the image in a third-party registry
// (go-containerregistry's) from which Pull gets it back intact.
func TestPushPull(t *testing.T) {
	img := testImage(t, 1<<20, 2)
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	c := client(t)
	if err := Push(context.Background(), c, srv.URL, img); err != nil {
		t.Fatal(err)
	}
	var progress atomic.Int64
	if _, err := Pull(context.Background(), c, srv.URL, img.Repo, img.Tag, img.ManifestDigest, &progress, nil); err != nil {
		t.Fatalf("pull what was pushed: %v", err)
	}
}
