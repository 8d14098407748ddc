package fleet

import (
	"math"
	"time"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Results is one run: its settings, each scenario, the goals.
type Results struct {
	Date       string           `json:"date"`
	Machine    benchkit.Machine `json:"machine"`
	Mode       string           `json:"mode"` // "netns" or "loopback"
	Simulation bool             `json:"simulation"`
	Network    string           `json:"network"`
	Nodes      int              `json:"nodes"`
	ImageBytes int64            `json:"image_bytes"` // S: manifest, config and layers
	Layers     int              `json:"layers"`
	LinkBits   float64          `json:"link_bits_per_s"`   // B
	UplinkBits float64          `json:"uplink_bits_per_s"` // u
	Scenarios  []ScenarioResult `json:"scenarios"`
	Goals      []Goal           `json:"goals"`
	Notes      []string         `json:"notes,omitempty"`
}

// ScenarioResult is one scenario. Times are seconds from the moment every
// device started pulling; nil when the devices did not finish.
type ScenarioResult struct {
	Name          Scenario     `json:"name"`
	Pullers       int          `json:"pullers"` // devices that pulled at once
	Done          int          `json:"done"`    // of them, finished (measured)
	P50           *float64     `json:"p50_s"`
	P100          *float64     `json:"p100_s"`
	Bound         float64      `json:"bound_s"`
	BoundFormula  string       `json:"bound_formula"`
	P100OverBound *float64     `json:"p100_over_bound"`
	UpstreamBytes int64        `json:"upstream_bytes"` // served by the upstream during the pulls
	UpstreamRatio float64      `json:"upstream_bytes_over_s"`
	CutAfter      float64      `json:"cut_after_s"` // how long the pulls were allowed
	Projected     bool         `json:"projected"`   // cut early; times and bytes projected (baseline)
	Devices       []NodeResult `json:"devices"`
	Errors        []string     `json:"errors,omitempty"`
}

// NodeResult is one device's pull.
type NodeResult struct {
	Device    string             `json:"device"`
	Seconds   *float64           `json:"seconds"` // nil: not finished
	Projected bool               `json:"projected,omitempty"`
	Bytes     int64              `json:"bytes"` // received by the device
	Error     string             `json:"error,omitempty"`
	Fetched   map[string]float64 `json:"node_fetched_bytes,omitempty"` // its node's own count, by source
}

// Goal is one target of issue 4 for the default run.
type Goal struct {
	Name   string   `json:"name"`
	Value  *float64 `json:"value"` // nil: not measurable (did not finish)
	Target float64  `json:"target"`
	Met    bool     `json:"met"`
}

// summarize fills the percentiles and ratios from the devices' results.
func (r *ScenarioResult) summarize(size int64) {
	times := make([]float64, 0, len(r.Devices))
	r.Done = 0
	for _, d := range r.Devices {
		switch {
		case d.Seconds == nil:
			times = append(times, math.Inf(1))
		default:
			times = append(times, *d.Seconds)
			if !d.Projected {
				r.Done++
			}
		}
	}
	r.P50 = finite(Percentile(times, 50))
	r.P100 = finite(Percentile(times, 100))
	if r.P100 != nil && r.Bound > 0 {
		r.P100OverBound = finite(*r.P100 / r.Bound)
	}
	r.UpstreamRatio = float64(r.UpstreamBytes) / float64(size)
}

// finite is &f, or nil for NaN and infinities (JSON has neither).
func finite(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

// goals evaluates the targets of the scenarios that ran.
func goals(scs []ScenarioResult) []Goal {
	var out []Goal
	for _, sc := range scs {
		switch sc.Name {
		case Cold:
			ratio := sc.UpstreamRatio
			out = append(out, Goal{Name: "cold: upstream bytes / S", Value: &ratio, Target: 1.02, Met: ratio <= 1.02 && sc.Done == sc.Pullers},
				goal("cold: p100 / bound", sc.P100OverBound, 1.15))
		case Warm:
			out = append(out, goal("warm: p100 / (S/B)", sc.P100OverBound, 1.25))
		}
	}
	return out
}

func goal(name string, v *float64, target float64) Goal {
	return Goal{Name: name, Value: v, Target: target, Met: v != nil && *v <= target}
}

func secs(d time.Duration) float64 { return d.Seconds() }
