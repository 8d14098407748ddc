package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Results is everything one run measured; results.json is this value.
type Results struct {
	Date        string       `json:"date"`
	Machine     Machine      `json:"machine"`
	SizeBytes   int64        `json:"size_bytes"`
	Runs        int          `json:"runs"`
	Servers     []Server     `json:"servers"`
	Ratios      []Ratio      `json:"ratios"`
	Memory      []Memory     `json:"memory"`
	PullThrough *PullThrough `json:"pull_through,omitempty"`
	Notes       []string     `json:"notes,omitempty"`
	Failures    []string     `json:"failures,omitempty"`
}

// Machine describes where the numbers were taken.
type Machine struct {
	benchkit.Machine
	Registry string `json:"registry"`
	Nginx    string `json:"nginx,omitempty"`
}

// Server is the GET throughput of one server, in GB/s (1e9 bytes/s), one
// entry per run in the order taken.
type Server struct {
	Name    string    `json:"name"`
	GBps    []float64 `json:"gbps"`
	Median  float64   `json:"median_gbps"`
	Best    float64   `json:"best_gbps"`
	Skipped string    `json:"skipped,omitempty"`
}

// Ratio compares imgmesh's median throughput with another server's.
type Ratio struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Goal  float64 `json:"goal"`
	Met   bool    `json:"met"`
}

// Memory is one resident-set figure in bytes; Goal 0 means none.
type Memory struct {
	Name  string `json:"name"`
	Bytes int64  `json:"bytes"`
	Goal  int64  `json:"goal_bytes,omitempty"`
	Met   bool   `json:"met"`
}

// PullThrough is a cold GET through a second node whose upstream is the
// registry: fetched, verified and stored while streamed to the client.
type PullThrough struct {
	Seconds float64 `json:"seconds"`
	GBps    float64 `json:"gbps"`
}

// ratio appends imgmesh / other when both were measured.
func (r *Results) ratio(name string, imgmesh, other *Server, goal float64) {
	if imgmesh == nil || other == nil || other.Median == 0 || other.Skipped != "" {
		return
	}
	v := imgmesh.Median / other.Median
	r.Ratios = append(r.Ratios, Ratio{Name: name, Value: v, Goal: goal, Met: v >= goal})
}

// mem appends a memory figure; goal 0 is informational.
func (r *Results) mem(name string, bytes, goal int64) {
	r.Memory = append(r.Memory, Memory{Name: name, Bytes: bytes, Goal: goal, Met: goal == 0 || bytes < goal})
}

// markdown renders the results as the report printed and saved.
func (r *Results) markdown(w io.Writer) {
	fmt.Fprintf(w, "# imgmesh serving benchmark\n\n")
	fmt.Fprintf(w, "%s · %s blob · %d GET runs per server, interleaved · loopback, one stream · "+
		"GB/s = 1e9 bytes/s, Go client reading into a 1 MiB discard buffer\n\n",
		r.Date, benchkit.SizeString(r.SizeBytes), r.Runs)
	fmt.Fprintf(w, "| server | median GB/s | best GB/s | runs (GB/s) |\n| --- | ---: | ---: | --- |\n")
	for _, s := range r.Servers {
		if s.Skipped != "" {
			fmt.Fprintf(w, "| %s | – | – | skipped: %s |\n", s.Name, s.Skipped)
			continue
		}
		runs := make([]string, len(s.GBps))
		for i, v := range s.GBps {
			runs[i] = fmt.Sprintf("%.2f", v)
		}
		fmt.Fprintf(w, "| %s | %.2f | %.2f | %s |\n", s.Name, s.Median, s.Best, strings.Join(runs, " "))
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintf(w, "\n| ratio of medians | value | goal | met |\n| --- | ---: | ---: | --- |\n")
		for _, q := range r.Ratios {
			fmt.Fprintf(w, "| %s | %.2fx | ≥ %.1fx | %s |\n", q.Name, q.Value, q.Goal, benchkit.Yes(q.Met))
		}
	}
	if r.PullThrough != nil {
		fmt.Fprintf(w, "\nCold pull-through (second node, docker-registry as its upstream, blob not yet stored): "+
			"%.2f GB/s (%.2f s).\n", r.PullThrough.GBps, r.PullThrough.Seconds)
	}
	if len(r.Memory) > 0 {
		fmt.Fprintf(w, "\n| memory (MB = 1e6 bytes) | MB | goal | met |\n| --- | ---: | ---: | --- |\n")
		for _, m := range r.Memory {
			goal, met := "–", "–"
			if m.Goal > 0 {
				goal, met = fmt.Sprintf("< %d", m.Goal/1e6), benchkit.Yes(m.Met)
			}
			fmt.Fprintf(w, "| %s | %.1f | %s | %s |\n", m.Name, float64(m.Bytes)/1e6, goal, met)
		}
	}
	m := r.Machine
	fmt.Fprintf(w, "\nMachine: nproc %d, %s, Linux %s, %s, load average at start %s; imgmesh %s, %s",
		m.NProc, m.CPU, m.Kernel, m.GoVersion, m.LoadAvg, m.Imgmesh, m.Registry)
	if m.Nginx != "" {
		fmt.Fprintf(w, ", %s", m.Nginx)
	}
	fmt.Fprintln(w, ".")
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
