package node

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	upstreamRequests *prometheus.CounterVec
	upstreamBytes    prometheus.Counter
	downloads        prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_upstream_requests_total",
			Help: "Requests the node sent upstream, by kind (tag, manifest, blob) and result.",
		}, []string{"kind", "result"}),
		upstreamBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgmesh_upstream_bytes_total",
			Help: "Blob bytes received from upstream registries.",
		}),
		downloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgmesh_blob_downloads_total",
			Help: "Blobs fetched from upstream, verified and committed to the store.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.upstreamRequests, m.upstreamBytes, m.downloads)
	}
	return m
}
