// Package registryapi is the OCI distribution-spec v1.1 HTTP server of a
// node: pulls go through a Source (local store, then elsewhere), pushes,
// tags, referrers and deletes go to the local blobstore.
package registryapi

import (
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/httpx"
	"github.com/imgmesh/imgmesh/node"
)

// Options configure the API server.
type Options struct {
	Source     Source          // pull path (required)
	Store      blobstore.Store // push, tags, referrers, deletes (required)
	Logger     *slog.Logger    // default: discard
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer // /metrics; default: Registerer if it gathers
	// MaxManifestSize bounds a pushed manifest. Default 4 MiB.
	MaxManifestSize int64
	// MaxUploads bounds concurrent upload sessions. Default 1024.
	MaxUploads int
	// UploadIdleTimeout cancels upload sessions idle this long. Default 15m.
	UploadIdleTimeout time.Duration

	now        func() time.Time // tests
	sweepEvery time.Duration    // tests; default: a minute, at most UploadIdleTimeout
}

// Keyer is implemented by a Source that keeps a repository in the store under
// a key other than its bare name (*node.Node: "<registry>/<repo>"). Pushes
// then land where pulls look.
type Keyer interface {
	Key(name node.Name) string
}

// Server is the http.Handler returned by New. Close cancels open uploads.
type Server struct {
	src      Source
	store    blobstore.Store
	log      *slog.Logger
	m        *metrics
	metricsH http.Handler
	maxMan   int64
	uploads  *uploads
}

// New returns the registry API handler: /v2/..., /healthz, /readyz and
// /metrics. It starts no goroutine; while uploads are open, a timer sweeps
// idle ones every minute. The handler is a *Server; call its Close on
// shutdown.
func New(opts Options) http.Handler {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxManifestSize <= 0 {
		opts.MaxManifestSize = 4 << 20
	}
	if opts.MaxUploads <= 0 {
		opts.MaxUploads = 1024
	}
	if opts.UploadIdleTimeout <= 0 {
		opts.UploadIdleTimeout = 15 * time.Minute
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	if opts.sweepEvery <= 0 {
		opts.sweepEvery = min(time.Minute, opts.UploadIdleTimeout)
	}
	g := opts.Gatherer
	if g == nil {
		if rg, ok := opts.Registerer.(prometheus.Gatherer); ok {
			g = rg
		} else {
			g = prometheus.NewRegistry()
		}
	}
	return &Server{
		src:      opts.Source,
		store:    opts.Store,
		log:      opts.Logger,
		m:        newMetrics(opts.Registerer),
		metricsH: promhttp.HandlerFor(g, promhttp.HandlerOpts{}),
		maxMan:   opts.MaxManifestSize,
		uploads:  newUploads(opts.MaxUploads, opts.UploadIdleTimeout, opts.sweepEvery, opts.now),
	}
}

// Close stops the upload sweeps and cancels every open upload session.
func (s *Server) Close() error {
	s.uploads.closeAll()
	return nil
}

// ServeHTTP records metrics and an access log line around dispatch.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := httpx.NewRecorder(w)
	routeLabel := "unknown"
	defer func() {
		p := recover()
		code := strconv.Itoa(rec.Status())
		if p != nil {
			code = "aborted"
		}
		d := time.Since(start)
		s.m.requests.WithLabelValues(routeLabel, r.Method, code).Inc()
		s.m.duration.WithLabelValues(routeLabel, r.Method).Observe(d.Seconds())
		s.log.LogAttrs(r.Context(), slog.LevelDebug, "request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("route", routeLabel), slog.String("status", code),
			slog.Int64("bytes", rec.Written()), slog.Duration("duration", d))
		if p != nil {
			panic(p)
		}
	}()
	routeLabel = s.dispatch(rec, r)
}

// dispatch serves r and returns the route label for metrics.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request) string {
	switch r.URL.Path {
	case "/healthz":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return "healthz"
		}
		writeText(w, r, http.StatusOK, "ok\n")
		return "healthz"
	case "/readyz":
		if !allow(w, r, http.MethodGet, http.MethodHead) {
			return "readyz"
		}
		if err := s.store.Writable(r.Context()); err != nil {
			s.log.LogAttrs(r.Context(), slog.LevelWarn, "store not writable", slog.String("err", err.Error()))
			writeError(w, r, apiError(CodeUnavailable, "store not writable").wrap(err))
			return "readyz"
		}
		writeText(w, r, http.StatusOK, "ok\n")
		return "readyz"
	case "/metrics":
		if allow(w, r, http.MethodGet, http.MethodHead) {
			s.metricsH.ServeHTTP(w, r)
		}
		return "metrics"
	}
	if r.URL.Path != "/v2" && !strings.HasPrefix(r.URL.Path, "/v2/") {
		writeError(w, r, notRoute())
		return "unknown"
	}
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	rt, perr := parsePath(r.URL.Path)
	if perr != nil {
		writeError(w, r, perr)
		return rt.kind.String()
	}
	switch rt.kind {
	case routePing:
		if allow(w, r, http.MethodGet, http.MethodHead) {
			w.Header().Set("Content-Type", "application/json")
			writeText(w, r, http.StatusOK, "{}")
		}
	case routeManifest:
		if allow(w, r, http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete) {
			s.manifest(w, r, rt)
		}
	case routeBlob:
		if allow(w, r, http.MethodGet, http.MethodHead, http.MethodDelete) {
			s.blob(w, r, rt)
		}
	case routeUploadStart:
		if allow(w, r, http.MethodPost) {
			s.startUpload(w, r, rt)
		}
	case routeUpload:
		if allow(w, r, http.MethodGet, http.MethodPatch, http.MethodPut, http.MethodDelete) {
			s.upload(w, r, rt)
		}
	case routeTags:
		if allow(w, r, http.MethodGet, http.MethodHead) {
			s.tags(w, r, rt)
		}
	case routeReferrers:
		if allow(w, r, http.MethodGet, http.MethodHead) {
			s.referrers(w, r, rt)
		}
	}
	return rt.kind.String()
}

// allow answers 405 UNSUPPORTED unless r's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, r, apiError(CodeUnsupported, map[string]string{"method": r.Method}))
	return false
}

func writeText(w http.ResponseWriter, r *http.Request, status int, body string) {
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	}
	w.Header().Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write([]byte(body))
	}
}

// nodeName is the Source name of a request: the repository plus the
// registry the client means (containerd's ?ns=).
func nodeName(r *http.Request, rt route) node.Name {
	return node.Name{NS: r.URL.Query().Get("ns"), Repo: rt.name}
}

// key is the store repository of name: the Source's key when it has one.
func (s *Server) key(name node.Name) string {
	if k, ok := s.src.(Keyer); ok {
		return k.Key(name)
	}
	return name.Repo
}

// fail logs err at a level matching its status and writes it.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, e *Error) {
	level := slog.LevelDebug
	if e.Status >= 500 {
		level = slog.LevelWarn
	}
	s.log.LogAttrs(r.Context(), level, "request failed",
		slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.Int("status", e.Status), slog.String("err", e.Error()))
	writeError(w, r, e)
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
