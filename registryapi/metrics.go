package registryapi

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the registry API. Registered on Options.Registerer; a
// collector already registered there (a second server on one registry) is
// shared.
type metrics struct {
	requests  *prometheus.CounterVec   // route, method, code
	duration  *prometheus.HistogramVec // route, method
	bytes     *prometheus.CounterVec   // source
	blobHits  *prometheus.CounterVec   // source
	hitRatio  prometheus.Gauge
	mu        sync.Mutex
	local     float64
	blobTotal float64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_registry_requests_total",
			Help: "Registry API requests by route, method and HTTP status.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imgmesh_registry_request_duration_seconds",
			Help:    "Registry API request duration by route and method.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route", "method"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_registry_blob_bytes_served_total",
			Help: "Blob bytes sent to clients by where they came from (local, peer, upstream).",
		}, []string{"source"}),
		blobHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_registry_blob_requests_total",
			Help: "Blob GET requests served, by where the blob came from (local, peer, upstream).",
		}, []string{"source"}),
		hitRatio: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imgmesh_registry_blob_hit_ratio",
			Help: "Share of blob GET requests served from the local store since start.",
		}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.duration = register(reg, m.duration)
		m.bytes = register(reg, m.bytes)
		m.blobHits = register(reg, m.blobHits)
		m.hitRatio = register(reg, m.hitRatio)
	}
	return m
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

// blobServed counts one blob GET served from source.
func (m *metrics) blobServed(source string) {
	if source == "" {
		source = "unknown"
	}
	m.blobHits.WithLabelValues(source).Inc()
	m.mu.Lock()
	m.blobTotal++
	if source == "local" {
		m.local++
	}
	m.hitRatio.Set(m.local / m.blobTotal)
	m.mu.Unlock()
}
