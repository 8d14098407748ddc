package discovery

import "github.com/prometheus/client_golang/prometheus"

// collector exports imgmesh_fleet_members{state}, computed from the member
// list at scrape time (suspect is a function of time, not of an event).
type collector struct {
	f    *Fleet
	desc *prometheus.Desc
}

func newCollector(f *Fleet) *collector {
	return &collector{f: f, desc: prometheus.NewDesc("imgmesh_fleet_members",
		"Members of the gossip fleet as this node sees them (this node included), by state.",
		[]string{"state"}, nil)}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counts := make(map[State]int, len(States))
	for _, m := range c.f.Members() {
		counts[m.State]++
	}
	for _, s := range States {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s))
	}
}
