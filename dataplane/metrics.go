package dataplane

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/internal/httpx"
)

// metrics of the data-plane server. A collector already registered on the
// Registerer (a second server) is shared.
type metrics struct {
	requests *prometheus.CounterVec // route, code
	bytes    prometheus.Counter
	// piecesRefused: pieces a seed refused because it had just sent them
	// to another member.
	piecesRefused prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_dataplane_requests_total",
			Help: "Data-plane requests served to peers, by route (blob, tag, health, unauthorized, other) and HTTP status.",
		}, []string{"route", "code"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgmesh_dataplane_bytes_sent_total",
			Help: "Body bytes sent to peers by the data plane.",
		}),
		piecesRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgmesh_dataplane_pieces_refused_total",
			Help: "Piece requests a seed (complete holder or upstream fetcher) refused because it had just sent that piece to another member.",
		}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.bytes = register(reg, m.bytes)
		m.piecesRefused = register(reg, m.piecesRefused)
	}
	return m
}

func (m *metrics) observe(route string, rec *httpx.Recorder) {
	m.requests.WithLabelValues(route, strconv.Itoa(rec.Status())).Inc()
	m.bytes.Add(float64(rec.Written()))
}

// register registers c, or returns the equal collector already registered.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}

// jsonErrors turns the plain-text errors of http.ServeContent (416, 412)
// into the data plane's JSON error bodies, and forwards ReadFrom.
type jsonErrors struct {
	http.ResponseWriter
	failed bool
}

func (w *jsonErrors) WriteHeader(code int) {
	if code < 400 {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.failed = true
	fail(w.ResponseWriter, code, strings.ToLower(http.StatusText(code)))
}

func (w *jsonErrors) Write(p []byte) (int, error) {
	if w.failed {
		return len(p), nil // ServeContent's text message; JSON already sent
	}
	return w.ResponseWriter.Write(p)
}

func (w *jsonErrors) ReadFrom(r io.Reader) (int64, error) {
	return io.Copy(w.ResponseWriter, r)
}

func (w *jsonErrors) Unwrap() http.ResponseWriter { return w.ResponseWriter }
