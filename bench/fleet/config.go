package fleet

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
)

// Scenario is one way the fleet pulls the image.
type Scenario string

// The scenarios, in the order they run.
const (
	Baseline Scenario = "baseline" // every device straight from upstream
	Cold     Scenario = "cold"     // every device through its own node, nothing cached
	Warm     Scenario = "warm"     // one node holds the image, the rest pull at once
)

// AllScenarios is the default set, in run order.
var AllScenarios = []Scenario{Baseline, Cold, Warm}

// Config is one benchmark run.
type Config struct {
	Nodes     int     // devices (N); each runs a node in cold and warm
	Size      int64   // image size (S) in bytes, split over Layers layers
	Layers    int     // layers (L)
	Link      float64 // device link rate (B), bytes/s, each direction
	Uplink    float64 // upstream link rate (u), bytes/s, each direction
	Out       string  // results folder
	Scenarios []Scenario
	Loopback  bool     // 127.0.0.1 simulation without root
	Keep      bool     // leave namespaces, data and logs for debugging
	Bin       string   // the imgmesh binary that runs the nodes
	NodeArgs  []string // extra flags for every `imgmesh serve`
	Seed      uint64   // seed of the image's random layers

	// TimeoutFactor bounds each imgmesh scenario at this many times its
	// bound (at least MinTimeout); a pull not done by then is reported as
	// not finished.
	TimeoutFactor float64
	// BaselineBudget cuts the baseline after this long and projects each
	// device's completion from its rate so far (0: run it to the end,
	// bounded by TimeoutFactor).
	BaselineBudget time.Duration

	minCut time.Duration // MinTimeout when 0 (tests cut sooner)
}

// MinTimeout is the shortest a scenario may run before its pulls are cut.
const MinTimeout = 20 * time.Second

// Defaults is the default run of the issue: 10 nodes, 200 MB in 4 layers,
// 100 Mbit/s links, a 50 Mbit/s uplink.
func Defaults() Config {
	return Config{
		Nodes: 10, Size: 200e6, Layers: 4, Link: 100e6 / 8, Uplink: 50e6 / 8,
		Out: "bench/results/fleet", Scenarios: AllScenarios, Seed: 1,
		TimeoutFactor: 4, BaselineBudget: 30 * time.Second,
	}
}

// MaxNodes is the most devices a run may have (one /24 with room for the
// upstream).
const MaxNodes = 200

// Validate checks the numbers before anything starts.
func (c Config) Validate() error {
	switch {
	case c.Nodes < 2 || c.Nodes > MaxNodes:
		return fmt.Errorf("--nodes %d: want 2 to %d", c.Nodes, MaxNodes)
	case c.Layers < 1 || c.Layers > 64:
		return fmt.Errorf("--layers %d: want 1 to 64", c.Layers)
	case c.Size < int64(c.Layers):
		return fmt.Errorf("--size %d B: want at least one byte per layer", c.Size)
	case c.Size > 8<<30:
		return fmt.Errorf("--size %s: the image is held in memory; want at most 8 GiB", humanize.Bytes(uint64(c.Size)))
	case !(c.Link > 0) || !(c.Uplink > 0) || math.IsInf(c.Link, 0) || math.IsInf(c.Uplink, 0):
		return errors.New("--link and --uplink: want rates above 0")
	case len(c.Scenarios) == 0:
		return errors.New("--scenarios: want at least one of baseline, cold, warm")
	case !(c.TimeoutFactor >= 1):
		return fmt.Errorf("timeout factor %g: want at least 1", c.TimeoutFactor)
	case c.BaselineBudget < 0:
		return fmt.Errorf("baseline budget %s: want 0 or more", c.BaselineBudget)
	case c.Bin == "":
		return errors.New("no imgmesh binary to run the nodes")
	}
	return nil
}

// ParseScenarios parses a comma-separated list such as "baseline,cold,warm";
// the scenarios run in the canonical order whatever the list's order.
func ParseScenarios(s string) ([]Scenario, error) {
	want := map[Scenario]bool{}
	for _, f := range strings.Split(s, ",") {
		f = strings.ToLower(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		sc := Scenario(f)
		if sc != Baseline && sc != Cold && sc != Warm {
			return nil, fmt.Errorf("scenario %q: want baseline, cold or warm", f)
		}
		want[sc] = true
	}
	var out []Scenario
	for _, sc := range AllScenarios {
		if want[sc] {
			out = append(out, sc)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("scenarios %q: want at least one of baseline, cold, warm", s)
	}
	return out, nil
}

// ParseSize parses a byte count with optional unit: 200MB (decimal),
// 64MiB (binary), 1048576.
func ParseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > math.MaxInt64 {
		return 0, fmt.Errorf("size %q: want a size above 0 like 200MB or 64MiB", s)
	}
	return int64(n), nil
}

// bitUnits are the rate units in bits per second, as tc spells them.
var bitUnits = []struct {
	suffix string
	mult   float64
}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}}

// ParseRate parses a link rate into bytes per second: bits per second as
// tc writes them (100Mbit, 1Gbit, 500kbit, optionally followed by /s) or
// bytes per second (12.5MB/s, 10MiB/s). "Mbps" is refused: tc reads it as
// bytes, most people as bits.
func ParseRate(s string) (float64, error) {
	bad := fmt.Errorf("rate %q: want a rate above 0 like 100Mbit or 12.5MB/s", s)
	v := strings.ToLower(strings.TrimSpace(s))
	v, perSecond := strings.CutSuffix(v, "/s")
	for _, u := range bitUnits { // gbit, mbit and kbit before bit
		num, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || !(f > 0) || math.IsInf(f, 0) {
			return 0, bad
		}
		return f * u.mult / 8, nil
	}
	if !perSecond {
		return 0, bad
	}
	n, err := humanize.ParseBytes(v)
	if err != nil || n == 0 {
		return 0, bad
	}
	return float64(n), nil
}

// FormatRate prints bytes per second as bits per second: "100 Mbit/s".
func FormatRate(bps float64) string {
	bits := bps * 8
	for _, u := range []struct {
		s string
		v float64
	}{{"Gbit/s", 1e9}, {"Mbit/s", 1e6}, {"kbit/s", 1e3}} {
		if bits >= u.v {
			return strconv.FormatFloat(bits/u.v, 'f', -1, 64) + " " + u.s
		}
	}
	return strconv.FormatFloat(bits, 'f', -1, 64) + " bit/s"
}
