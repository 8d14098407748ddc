package node

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	upstreamRequests *prometheus.CounterVec
	fetches          *prometheus.CounterVec
	fetchedBytes     *prometheus.CounterVec
	downloads        prometheus.Counter
	lookupSeconds    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_upstream_requests_total",
			Help: "Tag and manifest requests the node sent upstream, by kind and result.",
		}, []string{"kind", "result"}),
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_blob_fetches_total",
			Help: "Blob requests the node sent to other sources, by source (peer, upstream) and result.",
		}, []string{"source", "result"}),
		fetchedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "imgmesh_fetched_bytes_total",
			Help: "Blob bytes received, by source (peer, upstream).",
		}, []string{"source"}),
		downloads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "imgmesh_blob_downloads_total",
			Help: "Blobs fetched from elsewhere, verified and committed to the store.",
		}),
		lookupSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "imgmesh_node_lookup_seconds",
			Help:    "Time the node spent asking the fleet who holds content, budget included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.upstreamRequests, m.fetches, m.fetchedBytes, m.downloads, m.lookupSeconds)
	}
	return m
}
