package fleet

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Upstream is the origin registry of the benchmark: a read-only OCI
// distribution server of one in-memory image (GET and HEAD of /v2/, the
// manifest by tag or digest, the blobs, with byte ranges) that counts every
// body byte it serves. With a limiter, every response shares it: the
// uplink of the loopback simulation.
type Upstream struct {
	img     *Image
	limit   *Limiter // nil: unlimited
	served  atomic.Int64
	started time.Time
}

// NewUpstream serves img; limit may be nil.
func NewUpstream(img *Image, limit *Limiter) *Upstream {
	return &Upstream{img: img, limit: limit, started: time.Now()}
}

// Served is how many body bytes the upstream has sent since the last Reset.
func (u *Upstream) Served() int64 { return u.served.Load() }

// Reset sets the count of served bytes back to zero.
func (u *Upstream) Reset() { u.served.Store(0) }

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "read-only registry")
		return
	}
	p := r.URL.Path
	if p == "/v2/" || p == "/v2" {
		w.Header().Set("Content-Type", "application/json")
		u.serve(w, r, []byte("{}"), "")
		return
	}
	repo, kind, ref, ok := splitV2(p)
	if !ok || repo != u.img.Repo {
		regError(w, http.StatusNotFound, "NAME_UNKNOWN", "repository name not known to registry")
		return
	}
	switch kind {
	case "manifests":
		if ref != u.img.Tag && ref != u.img.ManifestDigest.String() {
			regError(w, http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown")
			return
		}
		w.Header().Set("Content-Type", v1.MediaTypeImageManifest)
		u.serve(w, r, u.img.Manifest, u.img.ManifestDigest)
	case "blobs":
		data, ok := u.img.Blobs[digest.Digest(ref)]
		if !ok {
			regError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry")
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		u.serve(w, r, data, digest.Digest(ref))
	default:
		regError(w, http.StatusNotFound, "UNSUPPORTED", "not served by this registry")
	}
}

// serve sends data with ranges and conditional requests, counted and, with
// a limiter, rate-limited.
func (u *Upstream) serve(w http.ResponseWriter, r *http.Request, data []byte, d digest.Digest) {
	if d != "" {
		w.Header().Set("Docker-Content-Digest", d.String())
		w.Header().Set("Etag", `"`+d.String()+`"`)
	}
	cw := &countingWriter{ResponseWriter: w, r: r, n: &u.served, limit: u.limit}
	http.ServeContent(cw, r, "", u.started, bytes.NewReader(data))
}

// splitV2 cuts /v2/<repo>/<kind>/<ref>; repo may hold slashes.
func splitV2(p string) (repo, kind, ref string, ok bool) {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return "", "", "", false
	}
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(rest, k); i > 0 {
			ref = rest[i+len(k):]
			if ref == "" || strings.Contains(ref, "/") {
				return "", "", "", false
			}
			return rest[:i], strings.Trim(k, "/"), ref, true
		}
	}
	return "", "", "", false
}

// regError writes an OCI error body.
func regError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
}

// countingWriter writes the body in chunks, each counted as it is sent
// (a blob arrives in one Write) and, with a limiter, paced by it. A short
// write takes back what was not sent.
type countingWriter struct {
	http.ResponseWriter
	r     *http.Request
	n     *atomic.Int64
	limit *Limiter
}

func (c *countingWriter) Write(p []byte) (int, error) {
	var total int
	for len(p) > 0 {
		n := min(len(p), chunk)
		if c.limit != nil {
			if err := c.limit.Wait(c.r.Context(), n); err != nil {
				return total, err
			}
		}
		// Counted before it is sent: a device may see the bytes before
		// Write returns, and what it received must be in the count.
		c.n.Add(int64(n))
		m, err := c.ResponseWriter.Write(p[:n])
		total += m
		c.n.Add(int64(m - n))
		if err != nil {
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}
