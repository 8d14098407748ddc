package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Goals from issue 3.
const (
	goalTransfer  = 1.2 // GB/s, verified peer transfer
	goalMissAdded = 20  // ms, p99 added to a miss by dead or silent peers
	goalLookupP50 = 10  // ms, provider lookup p50 on a 20-node fleet
)

// Results is everything one run measured; results.json is this value.
type Results struct {
	Date      string           `json:"date"`
	Machine   benchkit.Machine `json:"machine"`
	SizeBytes int64            `json:"size_bytes"`
	Runs      int              `json:"runs"`
	Transfer  *Transfer        `json:"transfer,omitempty"`
	Misses    []Misses         `json:"misses,omitempty"`
	Lookup    *Lookup          `json:"lookup,omitempty"`
	Notes     []string         `json:"notes,omitempty"`
	Failures  []string         `json:"failures,omitempty"`
}

// Transfer is (a), in GB/s (1e9 bytes/s), one entry per run.
type Transfer struct {
	PeerGBps     []float64 `json:"peer_gbps"`
	PeerMedian   float64   `json:"peer_median_gbps"`
	StreamGBps   []float64 `json:"peer_before_tail_gbps"`
	StreamMedian float64   `json:"peer_before_tail_median_gbps"`
	TailMS       []float64 `json:"peer_tail_ms"`
	TailMedian   float64   `json:"peer_tail_median_ms"`
	NodeGBps     []float64 `json:"node_to_node_gbps"`
	NodeMedian   float64   `json:"node_to_node_median_gbps"`
	LocalGBps    []float64 `json:"local_gbps"`
	LocalMedian  float64   `json:"local_median_gbps"`
	Libp2pGBps   []float64 `json:"libp2p_gbps"`
	Libp2pMedian float64   `json:"libp2p_median_gbps"`
	WriteGBps    []float64 `json:"new_file_write_gbps"`
	WriteMedian  float64   `json:"new_file_write_median_gbps"`
	PeakRSS      []int64   `json:"node_b_vmhwm_bytes"`
	Goal         float64   `json:"goal_gbps"`
	RatioToGoal  float64   `json:"ratio_to_goal"`
	Met          bool      `json:"met"`
}

// Misses is (b) for one fleet state: latencies of misses at the probe
// node in ms; Added* are p99 minus the p99 with an empty fleet.
type Misses struct {
	State        string  `json:"state"`
	Heads        int     `json:"heads"`
	Gets         int     `json:"gets"`
	HeadP50      float64 `json:"head_p50_ms"`
	HeadP99      float64 `json:"head_p99_ms"`
	GetP50       float64 `json:"get_p50_ms"`
	GetP99       float64 `json:"get_p99_ms"`
	LookupP50    float64 `json:"probe_lookup_hist_p50_ms"`
	LookupP99    float64 `json:"probe_lookup_hist_p99_ms"`
	Lookups      float64 `json:"probe_lookups"`
	AddedHeadP99 float64 `json:"added_head_p99_ms"`
	AddedGetP99  float64 `json:"added_get_p99_ms"`
	Met          bool    `json:"met"`
}

// Lookup is (c), in ms. Est* are HEAD misses less the median local HEAD.
type Lookup struct {
	Peers         int     `json:"peers"`
	Budget        string  `json:"lookup_timeout"`
	Found         int     `json:"found"`
	NotFound      int     `json:"not_found"`
	HeadP50       float64 `json:"head_p50_ms"`
	HeadP99       float64 `json:"head_p99_ms"`
	LocalP50      float64 `json:"local_head_p50_ms"`
	LocalP99      float64 `json:"local_head_p99_ms"`
	EstP50        float64 `json:"lookup_est_p50_ms"`
	EstP99        float64 `json:"lookup_est_p99_ms"`
	NodeHistP50   float64 `json:"node_hist_p50_ms"`
	NodeHistP99   float64 `json:"node_hist_p99_ms"`
	NodeHistCount float64 `json:"node_hist_count"`
	ProvHistP50   float64 `json:"provider_hist_p50_ms"`
	ProvHistP99   float64 `json:"provider_hist_p99_ms"`
	ProvHistCount float64 `json:"provider_hist_count"`
	Met           bool    `json:"met"`
}

// markdown renders the results as the report printed and saved.
func (r *Results) markdown(w io.Writer) {
	fmt.Fprintf(w, "# imgmesh mesh benchmark\n\n%s · loopback (127.0.0.1) · fleet key on · mDNS off · "+
		"GB/s = 1e9 bytes/s · ms = milliseconds\n", r.Date)
	if t := r.Transfer; t != nil {
		fmt.Fprintf(w, "\n## (a) Peer transfer of a %s blob, %d runs interleaved\n\n", benchkit.SizeString(r.SizeBytes), r.Runs)
		fmt.Fprintf(w, "| path | median GB/s | runs (GB/s) |\n| --- | ---: | --- |\n")
		fmt.Fprintf(w, "| verified peer transfer: cold GET through node B, fetched from node A over the data plane | **%.2f** | %s |\n",
			t.PeerMedian, floats(t.PeerGBps))
		fmt.Fprintf(w, "| the same, all but the last MiB (the node holds the last byte until verified and stored) | %.2f | %s |\n",
			t.StreamMedian, floats(t.StreamGBps))
		fmt.Fprintf(w, "| node to node: B fetches from A into its store, verified and committed, no client reading along | %.2f | %s |\n",
			t.NodeMedian, floats(t.NodeGBps))
		fmt.Fprintf(w, "| local hit: GET from node A's store | %.2f | %s |\n", t.LocalMedian, floats(t.LocalGBps))
		fmt.Fprintf(w, "| raw libp2p stream (TCP, fleet PSK), receiver hashing sha256 | %.2f | %s |\n",
			t.Libp2pMedian, floats(t.Libp2pGBps))
		fmt.Fprintf(w, "| writing the same bytes to a new file next to the nodes' data (page cache, no fsync; every node's download does this) | %.2f | %s |\n",
			t.WriteMedian, floats(t.WriteGBps))
		fmt.Fprintf(w, "\nPeer transfer vs goal (≥ %.1f GB/s): **%.2fx** (met: %s); vs local hit %.2fx; vs raw libp2p %.2fx. ",
			t.Goal, t.RatioToGoal, benchkit.Yes(t.Met), ratio(t.PeerMedian, t.LocalMedian), ratio(t.PeerMedian, t.Libp2pMedian))
		fmt.Fprintf(w, "The last MiB (with the wait for verify, fsync, commit): median %.1f ms (%s). ", t.TailMedian, floats1(t.TailMS))
		fmt.Fprintf(w, "Node B peak RSS (VmHWM) over the transfer: %.1f MB (max of runs; %s).\n",
			float64(slices.Max(t.PeakRSS))/1e6, mbs(t.PeakRSS))
	}
	if len(r.Misses) > 0 {
		fmt.Fprintf(w, "\n## (b) Latency of a miss (blob only upstream) at one node, by the state of its fleet\n\n")
		fmt.Fprintf(w, "Probe node with the default --lookup-timeout (15ms); upstream: an in-process registry "+
			"(go-containerregistry) on 127.0.0.1; %d misses per state, alternating HEAD and GET of 4 KiB blobs. "+
			"Lookup = the probe's imgmesh_node_lookup_seconds over the same requests (buckets, interpolated). "+
			"Added = p99 − p99 with an empty fleet; goal: added p99 < %d ms.\n\n", r.Misses[0].Heads+r.Misses[0].Gets, goalMissAdded)
		fmt.Fprintf(w, "| fleet | HEAD p50 | HEAD p99 | GET p50 | GET p99 | lookup p50 | lookup p99 | added p99 HEAD | added p99 GET | met |\n")
		fmt.Fprintf(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n")
		for i, m := range r.Misses {
			met := benchkit.Yes(m.Met)
			if i == 0 {
				met = "baseline"
			}
			fmt.Fprintf(w, "| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %+.1f | %+.1f | %s |\n",
				m.State, m.HeadP50, m.HeadP99, m.GetP50, m.GetP99, m.LookupP50, m.LookupP99, m.AddedHeadP99, m.AddedGetP99, met)
		}
	}
	if l := r.Lookup; l != nil {
		fmt.Fprintf(w, "\n## (c) Provider lookup on a %d-node loopback fleet\n\n", l.Peers+1)
		fmt.Fprintf(w, "%d peers (--lookup-timeout %s) and the probe node; each peer holds one 4 KiB blob; "+
			"HEAD of another peer's blob = provider lookup + data-plane stat. Goal: lookup p50 < %d ms.\n\n",
			l.Peers, l.Budget, goalLookupP50)
		fmt.Fprintf(w, "| measure | p50 ms | p99 ms | n |\n| --- | ---: | ---: | ---: |\n")
		fmt.Fprintf(w, "| HEAD of a blob another peer holds | %.2f | %.2f | %d |\n", l.HeadP50, l.HeadP99, l.Found)
		fmt.Fprintf(w, "| HEAD of the peer's own blob (baseline) | %.2f | %.2f | %d |\n", l.LocalP50, l.LocalP99, l.Found+l.NotFound)
		fmt.Fprintf(w, "| **lookup, estimated** (HEAD − baseline p50) | **%.2f** | %.2f | %d |\n", l.EstP50, l.EstP99, l.Found)
		fmt.Fprintf(w, "| imgmesh_node_lookup_seconds (buckets, interpolated) | %.2f | %.2f | %.0f |\n", l.NodeHistP50, l.NodeHistP99, l.NodeHistCount)
		fmt.Fprintf(w, "| imgmesh_provider_lookup_seconds (buckets, interpolated) | %.2f | %.2f | %.0f |\n", l.ProvHistP50, l.ProvHistP99, l.ProvHistCount)
		fmt.Fprintf(w, "\nLookup p50 < %d ms: %s", goalLookupP50, benchkit.Yes(l.Met))
		if l.NotFound > 0 {
			fmt.Fprintf(w, " (%d HEADs found no holder within %s)", l.NotFound, l.Budget)
		}
		fmt.Fprintln(w, ".")
	}
	m := r.Machine
	fmt.Fprintf(w, "\nMachine: nproc %d, %s, Linux %s, %s, load average at start %s; imgmesh %s.\n",
		m.NProc, m.CPU, m.Kernel, m.GoVersion, m.LoadAvg, m.Imgmesh)
	for _, n := range r.Notes {
		fmt.Fprintf(w, "\nNote: %s\n", n)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "\n**FAILED**: %s\n", f)
	}
}

// write saves results.md and results.json in dir.
func (r *Results) write(dir string) error {
	return benchkit.WriteResults(dir, r.markdown, r)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func floats(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(s, " ")
}

func mbs(xs []int64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.1f", float64(x)/1e6)
	}
	return strings.Join(s, " ")
}

func floats1(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, " ")
}
