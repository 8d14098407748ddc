package p2p

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reg        prometheus.Registerer
	lookup     *prometheus.HistogramVec
	peers      prometheus.Gauge
	advertised prometheus.Gauge
}

// newMetrics makes the host's metrics and registers them on reg (nil: kept
// unregistered).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reg: reg,
		lookup: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "imgmesh_provider_lookup_seconds",
			Help:    "Time to look up the holders of a key in the DHT, by result (found, none).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"result"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imgmesh_peers",
			Help: "Number of peers with an open libp2p connection.",
		}),
		advertised: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "imgmesh_advertised_keys",
			Help: "Number of keys (blobs, manifests, tags) this node announces in the DHT.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.collectors() {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors()[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("p2p metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.lookup, m.peers, m.advertised}
}

func (m *metrics) unregister() {
	if m.reg == nil {
		return
	}
	for _, c := range m.collectors() {
		m.reg.Unregister(c)
	}
}
