package upstream_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/upstream"
)

// layerOf pushes a one-layer image and returns its layer's digest and bytes.
func layerOf(t *testing.T, o *origin, repo string, size int64) (digest.Digest, []byte) {
	t.Helper()
	img := randomImage(t, size, 1)
	o.pushImage(t, repo, "v1", img)
	l := must[[]v1.Layer](t)(img.Layers())[0]
	return digest.Digest(must[v1.Hash](t)(l.Digest()).String()), readAll(t, must[io.ReadCloser](t)(l.Compressed()))
}

// serveRanges answers blob GETs itself with http.ServeContent over the
// registry's bytes, as distribution does, so Range gets a real 206.
func serveRanges(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
	if r.Method != http.MethodGet || !strings.Contains(r.URL.Path, "/blobs/") {
		return false
	}
	full := httptest.NewRecorder()
	whole := r.Clone(r.Context())
	whole.Header.Del("Range")
	next.ServeHTTP(full, whole)
	if full.Code != http.StatusOK {
		return false
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(full.Body.Bytes()))
	return true
}

// ignoreRanges drops the Range header: the registry answers 200 in full.
func ignoreRanges(_ http.ResponseWriter, r *http.Request, _ http.Handler) bool {
	r.Header.Del("Range")
	return false
}

func TestBlob(t *testing.T) {
	o := newOrigin(t)
	d, data := layerOf(t, o, "app", 64<<10)
	c := originClient(t, o, "reg.test")
	for _, tc := range []struct {
		name       string
		offset     int64
		intercept  func(http.ResponseWriter, *http.Request, http.Handler) bool
		wantStatus int
		wantGets   int
	}{
		{name: "full", wantStatus: 200, wantGets: 1},
		{name: "offset, server honours Range", offset: 1000, intercept: serveRanges, wantStatus: 206, wantGets: 1},
		{name: "offset, server ignores Range", offset: 1000, intercept: ignoreRanges, wantStatus: 200, wantGets: 1},
		{name: "offset at last byte", offset: int64(len(data)) - 1, intercept: serveRanges, wantStatus: 206, wantGets: 1},
		// ggcr's registry answers 416 to an open-ended range: read it whole.
		{name: "offset, server rejects open range", offset: 1000, wantStatus: 416, wantGets: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var status atomic.Int32
			o.setIntercept(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
				rec := &statusRecorder{ResponseWriter: w, status: &status}
				if tc.intercept == nil || !tc.intercept(rec, r, next) {
					next.ServeHTTP(rec, r)
				}
				return true
			})
			defer o.setIntercept(nil)
			o.reset()
			rc, total, err := c.Blob(bg, "reg.test", "app", d, tc.offset)
			if err != nil {
				t.Fatal(err)
			}
			got := readAll(t, rc)
			if total != int64(len(data)) || !bytes.Equal(got, data[tc.offset:]) {
				t.Errorf("total %d, %d bytes; want %d, %d bytes from offset %d", total, len(got), len(data), len(data)-int(tc.offset), tc.offset)
			}
			if got := int(status.Load()); got != tc.wantStatus {
				t.Errorf("upstream answered %d, want %d", got, tc.wantStatus)
			}
			if n := o.count(http.MethodGet, "/blobs/"); n != tc.wantGets {
				t.Errorf("%d blob GETs, want %d", n, tc.wantGets)
			}
		})
	}
	t.Run("offset past the end", func(t *testing.T) {
		o.setIntercept(serveRanges)
		defer o.setIntercept(nil)
		if rc, _, err := c.Blob(bg, "reg.test", "app", d, int64(len(data))+10); !errors.Is(err, upstream.ErrUnavailable) {
			if rc != nil {
				rc.Close()
			}
			t.Fatalf("got %v, want ErrUnavailable", err)
		}
	})
}

// statusRecorder notes the status before any byte reaches the client.
type statusRecorder struct {
	http.ResponseWriter
	status *atomic.Int32
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status.CompareAndSwap(0, int32(code))
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.status.CompareAndSwap(0, http.StatusOK)
	return s.ResponseWriter.Write(b)
}

func TestStatBlobAndNotFound(t *testing.T) {
	o := newOrigin(t)
	d, data := layerOf(t, o, "app", 4096)
	c := originClient(t, o, "reg.test")
	size, err := c.StatBlob(bg, "reg.test", "app", d)
	if err != nil || size != int64(len(data)) {
		t.Fatalf("StatBlob = %d, %v; want %d", size, err, len(data))
	}
	if n := o.count(http.MethodHead, "/blobs/"); n != 1 {
		t.Errorf("%d HEADs, want 1", n)
	}
	missing := digest.FromString("missing")
	if _, err := c.StatBlob(bg, "reg.test", "app", missing); !errors.Is(err, upstream.ErrNotFound) {
		t.Errorf("StatBlob missing: %v", err)
	}
	if _, _, err := c.Blob(bg, "reg.test", "app", missing, 0); !errors.Is(err, upstream.ErrNotFound) || !strings.Contains(err.Error(), missing.String()) {
		t.Errorf("Blob missing: %v", err)
	}
	if _, err := c.Tags(bg, "reg.test", "nope"); !errors.Is(err, upstream.ErrNotFound) {
		t.Errorf("Tags of unknown repo: %v", err)
	}
}

func TestTagsPagination(t *testing.T) {
	o := newOrigin(t)
	img := randomImage(t, 128, 1)
	want := []string{"a", "b", "c", "d", "e"}
	for _, tag := range want {
		o.pushImage(t, "app", tag, img)
	}
	const page = 2
	paginate := func(linkTo func(r *http.Request, last string) string) func(http.ResponseWriter, *http.Request, http.Handler) bool {
		return func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
			if !strings.HasSuffix(r.URL.Path, "/tags/list") {
				return false
			}
			q := r.URL.Query()
			q.Set("n", strconv.Itoa(page))
			r.URL.RawQuery = q.Encode()
			rec := httptest.NewRecorder()
			next.ServeHTTP(rec, r)
			var body struct{ Tags []string }
			_ = json.Unmarshal(rec.Body.Bytes(), &body)
			if len(body.Tags) == page {
				w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, linkTo(r, body.Tags[page-1])))
			}
			_, _ = w.Write(rec.Body.Bytes())
			return true
		}
	}
	for _, tc := range []struct {
		name      string
		linkTo    func(r *http.Request, last string) string
		wantErr   string
		wantPages int
	}{
		{name: "relative links", wantPages: 3, linkTo: func(r *http.Request, last string) string {
			return r.URL.Path + "?n=2&last=" + last
		}},
		{name: "absolute links", wantPages: 3, linkTo: func(r *http.Request, last string) string {
			return "http://" + r.Host + r.URL.Path + "?n=2&last=" + last
		}},
		{name: "link to another host", wantPages: 1, wantErr: "another host", linkTo: func(r *http.Request, last string) string {
			return "http://127.0.0.2:1" + r.URL.Path + "?last=" + last
		}},
		{name: "endless links stop", wantPages: 100, wantErr: "100 pages", linkTo: func(r *http.Request, _ string) string {
			return r.URL.Path
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o.setIntercept(paginate(tc.linkTo))
			defer o.setIntercept(nil)
			o.reset()
			c := originClient(t, o, "reg.test")
			got, err := c.Tags(bg, "reg.test", "app")
			if n := o.count(http.MethodGet, "/tags/list"); n != tc.wantPages {
				t.Errorf("%d pages fetched, want %d", n, tc.wantPages)
			}
			if tc.wantErr != "" {
				if !errors.Is(err, upstream.ErrUnavailable) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, want) {
				t.Fatalf("got %v, %v; want %v", got, err, want)
			}
		})
	}
}

func TestUnreachableFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := newClient(t, upstream.Options{Registries: []upstream.Registry{{Name: "dead.test", URL: "http://" + addr}}})
	d := digest.FromString("x")
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{name: "manifest", call: func() error { _, err := c.Manifest(bg, "dead.test", "app", "v1", false); return err }},
		{name: "blob", call: func() error { _, _, err := c.Blob(bg, "dead.test", "app", d, 0); return err }},
		{name: "stat", call: func() error { _, err := c.StatBlob(bg, "dead.test", "app", d); return err }},
		{name: "tags", call: func() error { _, err := c.Tags(bg, "dead.test", "app"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := tc.call()
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("took %v", took)
			}
			if !errors.Is(err, upstream.ErrUnavailable) || !strings.Contains(err.Error(), "dead.test/app") {
				t.Errorf("got %v, want ErrUnavailable naming dead.test/app", err)
			}
		})
	}
}
