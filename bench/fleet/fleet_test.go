package fleet

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestBound(t *testing.T) {
	const mbit = 1e6 / 8
	tests := []struct {
		name    string
		n       int
		s       int64
		u, b    float64
		want    time.Duration
		warm    time.Duration
		initial time.Duration // BaselineTime
	}{
		{name: "issue default: the uplink binds", n: 10, s: 200e6, u: 50 * mbit, b: 100 * mbit,
			want: 32 * time.Second, warm: 16 * time.Second, initial: 320 * time.Second},
		{name: "fast uplink: the device link binds", n: 4, s: 100e6, u: 1000 * mbit, b: 100 * mbit,
			want: 8 * time.Second, warm: 8 * time.Second, initial: 8 * time.Second},
		{name: "unshaped devices: only the uplink", n: 3, s: 10e6, u: 10e6, b: 0,
			want: time.Second, warm: 0, initial: 3 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			near := func(what string, got, want time.Duration) {
				if d := got - want; d < -time.Microsecond || d > time.Microsecond {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			near("Bound", Bound(tt.n, tt.s, tt.u, tt.b), tt.want)
			near("WarmBound", WarmBound(tt.s, tt.b), tt.warm)
			near("BaselineTime", BaselineTime(tt.n, tt.s, tt.u, tt.b), tt.initial)
		})
	}
}

func TestPercentile(t *testing.T) {
	inf := math.Inf(1)
	tests := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{name: "p100 is the max", xs: []float64{3, 1, 2}, p: 100, want: 3},
		{name: "p50 of odd count: the middle", xs: []float64{5, 1, 3}, p: 50, want: 3},
		{name: "p50 of even count: the lower middle", xs: []float64{4, 1, 3, 2}, p: 50, want: 2},
		{name: "p90 of ten", xs: []float64{10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, p: 90, want: 9},
		{name: "one value", xs: []float64{7}, p: 50, want: 7},
		{name: "unfinished device makes p100 infinite", xs: []float64{1, inf, 2}, p: 100, want: inf},
		{name: "unfinished device leaves p50", xs: []float64{1, inf, 2}, p: 50, want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.xs...)
			if got := Percentile(in, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.xs, tt.p, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.xs[i] {
					t.Fatalf("Percentile reordered its input: %v", in)
				}
			}
		})
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("Percentile of nothing: want NaN")
	}
}

func TestProjectShared(t *testing.T) {
	tests := []struct {
		name            string
		remaining       []float64
		rate, perDevice float64
		want            []float64
	}{
		{name: "fair share, then the rest to the last", remaining: []float64{10, 20}, rate: 10, want: []float64{7, 8}},
		{name: "order kept", remaining: []float64{20, 10}, rate: 10, want: []float64{8, 7}},
		{name: "no device above its link", remaining: []float64{10, 20}, rate: 10, perDevice: 4, want: []float64{7.5, 10}},
		{name: "equal: together", remaining: []float64{6, 6, 6}, rate: 3, want: []float64{11, 11, 11}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ProjectShared(5, tt.remaining, tt.rate, tt.perDevice)
			for i := range got {
				if math.Abs(got[i]-tt.want[i]) > 1e-9 {
					t.Fatalf("ProjectShared(5, %v, %v, %v) = %v, want %v", tt.remaining, tt.rate, tt.perDevice, got, tt.want)
				}
			}
		})
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in      string
		want    float64 // bytes/s
		wantErr bool
	}{
		{in: "100Mbit", want: 12.5e6},
		{in: "50mbit", want: 6.25e6},
		{in: "1Gbit", want: 125e6},
		{in: "1.5Gbit/s", want: 187.5e6},
		{in: "800kbit", want: 100e3},
		{in: "8000bit", want: 1000},
		{in: "12.5MB/s", want: 12.5e6},
		{in: "10MiB/s", want: 10 << 20},
		{in: "100Mbps", wantErr: true}, // tc reads bytes, people read bits
		{in: "100", wantErr: true},
		{in: "100MB", wantErr: true}, // a size, not a rate
		{in: "0Mbit", wantErr: true},
		{in: "-5Mbit", wantErr: true},
		{in: "fastbit", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseRate(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseRate(%q) = %v, %v; want error %v", tt.in, got, err, tt.wantErr)
			}
			if err == nil && math.Abs(got-tt.want) > 1e-6 {
				t.Errorf("ParseRate(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	if got := FormatRate(12.5e6); got != "100 Mbit/s" {
		t.Errorf("FormatRate(12.5e6) = %q", got)
	}
	if got := FormatRate(187.5e6); got != "1.5 Gbit/s" {
		t.Errorf("FormatRate(187.5e6) = %q", got)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "200MB", want: 200e6},
		{in: "64MiB", want: 64 << 20},
		{in: "1048576", want: 1 << 20},
		{in: "0", wantErr: true},
		{in: "lots", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSize(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseScenarios(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Scenario
		wantErr  bool
	}{
		{name: "all, run in canonical order", in: "warm, cold,baseline", want: AllScenarios},
		{name: "one", in: "cold", want: []Scenario{Cold}},
		{name: "duplicates and case", in: "Warm,warm", want: []Scenario{Warm}},
		{name: "unknown", in: "cold,hot", wantErr: true},
		{name: "empty", in: " , ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseScenarios(tt.in)
			if (err != nil) != tt.wantErr || strings.Join(scStrings(got), ",") != strings.Join(scStrings(tt.want), ",") {
				t.Errorf("ParseScenarios(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func scStrings(ss []Scenario) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = string(s)
	}
	return out
}

func TestValidate(t *testing.T) {
	ok := Defaults()
	ok.Bin = "/bin/true"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	tests := []struct {
		name   string
		change func(*Config)
	}{
		{name: "one node", change: func(c *Config) { c.Nodes = 1 }},
		{name: "too many nodes", change: func(c *Config) { c.Nodes = MaxNodes + 1 }},
		{name: "no layers", change: func(c *Config) { c.Layers = 0 }},
		{name: "fewer bytes than layers", change: func(c *Config) { c.Size = 3 }},
		{name: "no link", change: func(c *Config) { c.Link = 0 }},
		{name: "no scenarios", change: func(c *Config) { c.Scenarios = nil }},
		{name: "timeout below the bound", change: func(c *Config) { c.TimeoutFactor = 0.5 }},
		{name: "no binary", change: func(c *Config) { c.Bin = "" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.change(&c)
			if err := c.Validate(); err == nil {
				t.Error("Validate: no error")
			}
		})
	}
}

// TestLimiter proves a shared limiter holds two streams together to its
// rate: 1 MiB through 4 MiB/s takes about a quarter second.
func TestLimiter(t *testing.T) {
	l := NewLimiter(4<<20, 64<<10)
	ctx := context.Background()
	start := time.Now()
	done := make(chan error, 2)
	for range 2 {
		go func() {
			var err error
			for range 16 { // 16 x 32 KiB = 512 KiB each
				if err = l.Wait(ctx, chunk); err != nil {
					break
				}
			}
			done <- err
		}()
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	// 1 MiB at 4 MiB/s is 250 ms, less the 64 KiB burst (15.6 ms).
	if el := time.Since(start); el < 220*time.Millisecond || el > 2*time.Second {
		t.Errorf("1 MiB through a 4 MiB/s limiter took %v, want about 234 ms", el)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := l.Wait(cctx, 4<<20); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait on a cancelled context = %v, want context.Canceled", err)
	}
}

func TestMakeImage(t *testing.T) {
	a, err := MakeImage("r", "t", 1000, 3, 7)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := MakeImage("r", "t", 1000, 3, 7)
	c, _ := MakeImage("r", "t", 1000, 3, 8)
	if a.ManifestDigest != b.ManifestDigest {
		t.Error("same seed, different images")
	}
	if a.ManifestDigest == c.ManifestDigest {
		t.Error("different seeds, same image")
	}
	var layers int64
	for _, d := range a.Order[1:] {
		layers += int64(len(a.Blobs[d]))
	}
	if len(a.Order) != 4 || layers != 1000 {
		t.Errorf("%d blobs with %d layer bytes, want a config and 3 layers of 1000 bytes", len(a.Order), layers)
	}
	if a.Size() != int64(len(a.Manifest))+int64(len(a.Blobs[a.Order[0]]))+1000 {
		t.Errorf("Size %d does not add up manifest, config and layers", a.Size())
	}
	if _, err := MakeImage("r", "t", 2, 3, 1); err == nil {
		t.Error("2 bytes in 3 layers: no error")
	}
}

// sampleResults is a run with a finished, a cut and a projected scenario.
func sampleResults() *Results {
	f := func(v float64) *float64 { return &v }
	r := &Results{Mode: "loopback", Simulation: true, Network: "net", Nodes: 3, ImageBytes: 10e6, Layers: 2,
		LinkBits: 100e6, UplinkBits: 50e6}
	r.Scenarios = []ScenarioResult{
		{Name: Baseline, Pullers: 3, Bound: 1.6, BoundFormula: "b", CutAfter: 2, UpstreamBytes: 30e6, Devices: []NodeResult{
			{Device: "device1", Seconds: f(1.9), Bytes: 10e6},
			{Device: "device2", Seconds: f(4.8), Projected: true, Bytes: 4e6},
			{Device: "device3", Seconds: f(4.7), Projected: true, Bytes: 4e6},
		}},
		{Name: Cold, Pullers: 3, Bound: 1.6, BoundFormula: "b", CutAfter: 20, UpstreamBytes: 12e6, Devices: []NodeResult{
			{Device: "device1", Seconds: f(1.7), Bytes: 10e6},
			{Device: "device2", Seconds: f(1.8), Bytes: 10e6},
			{Device: "device3", Bytes: 9e6, Error: "not finished, with \"quotes\", and commas"},
		}},
		{Name: Warm, Pullers: 2, Bound: 0.8, BoundFormula: "S/B", CutAfter: 20, UpstreamBytes: 1000, Devices: []NodeResult{
			{Device: "device2", Seconds: f(0.9), Bytes: 10e6},
			{Device: "device3", Seconds: f(0.95), Bytes: 10e6},
		}},
	}
	for i := range r.Scenarios {
		r.Scenarios[i].Projected = i == 0
		r.Scenarios[i].summarize(r.ImageBytes)
	}
	r.Goals = goals(r.Scenarios)
	return r
}

func TestSummaryAndGoals(t *testing.T) {
	r := sampleResults()
	base, cold, warm := r.Scenarios[0], r.Scenarios[1], r.Scenarios[2]
	if base.Done != 1 || *base.P100 != 4.8 || base.UpstreamRatio != 3 {
		t.Errorf("baseline: done %d, p100 %v, ratio %v; want 1 measured, p100 4.8 (projected), 3.0", base.Done, *base.P100, base.UpstreamRatio)
	}
	if cold.Done != 2 || cold.P100 != nil || *cold.P50 != 1.8 || cold.P100OverBound != nil {
		t.Errorf("cold: done %d, p50 %v, p100 %v: want 2 done, p50 1.8, no p100", cold.Done, cold.P50, cold.P100)
	}
	if math.Abs(*warm.P100OverBound-0.95/0.8) > 1e-9 {
		t.Errorf("warm p100/bound = %v", *warm.P100OverBound)
	}
	met := map[string]bool{}
	for _, g := range r.Goals {
		met[g.Name] = g.Met
	}
	want := map[string]bool{"cold: upstream bytes / S": false, "cold: p100 / bound": false, "warm: p100 / (S/B)": true}
	for k, v := range want {
		if got, ok := met[k]; !ok || got != v {
			t.Errorf("goal %q met = %v (present %v), want %v", k, got, ok, v)
		}
	}
}

func TestWriters(t *testing.T) {
	r := sampleResults()
	dir := t.TempDir()
	if err := r.Write(dir); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(filepath.Join(dir, CSVFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("results.csv does not parse: %v", err)
	}
	if len(rows) != 1+3+3+2 || rows[0][0] != "scenario" {
		t.Fatalf("results.csv: %d rows (header %v), want a header and 8 devices", len(rows), rows[0])
	}
	if cut := rows[6]; cut[0] != "cold" || cut[2] != "false" || cut[3] != "" || !strings.Contains(cut[8], "commas") {
		t.Errorf("unfinished device row = %q", cut)
	}
	if proj := rows[2]; proj[4] != "true" || proj[2] != "false" {
		t.Errorf("projected device row = %q: want projected, not done", proj)
	}

	js, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if back.Scenarios[1].P100 != nil || !back.Simulation {
		t.Errorf("results.json: cold p100 %v (want null), simulation %v", back.Scenarios[1].P100, back.Simulation)
	}

	svg, err := os.ReadFile(filepath.Join(dir, SVGFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := 0
	for _, se := range svgElements(t, svg) {
		if se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 3 || !bytes.Contains(svg, []byte("SIMULATION (loopback)")) {
		t.Errorf("fleet.svg: %d curves (want 3), simulation label %v", lines, bytes.Contains(svg, []byte("SIMULATION")))
	}

	md, err := os.ReadFile(filepath.Join(dir, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SIMULATION (loopback)", "| cold | 2/3 | 1.8 s | >20 s |", "| baseline | 1/3 | ~4.7 s | ~4.8 s | ~3.00 |", "projected"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("results.md lacks %q:\n%s", want, md)
		}
	}
}

func TestNiceCeil(t *testing.T) {
	for _, tt := range []struct{ in, want float64 }{{0.3, 0.5}, {33.6, 50}, {96, 100}, {101, 200}, {240, 250}} {
		if got := niceCeil(tt.in); got != tt.want {
			t.Errorf("niceCeil(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

// TestSVGKeepsProjectionsOffTheAxis: a baseline projected to ten times the
// other scenarios does not set the time axis; its line runs to the plot's
// edge and ends in an arrow, and the others keep most of the width.
func TestSVGKeepsProjectionsOffTheAxis(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	r := &Results{Mode: "netns", Network: "net", Nodes: 2, ImageBytes: 200e6, Layers: 4, LinkBits: 100e6, UplinkBits: 50e6}
	r.Scenarios = []ScenarioResult{
		{Name: Baseline, Pullers: 2, Bound: 32, CutAfter: 30, Projected: true, Devices: []NodeResult{
			{Device: "device1", Seconds: f(330), Projected: true},
			{Device: "device2", Seconds: f(335), Projected: true},
		}},
		{Name: Cold, Pullers: 2, Bound: 32, CutAfter: 128, Devices: []NodeResult{
			{Device: "device1", Seconds: f(35)}, {Device: "device2", Seconds: f(35.3)},
		}},
		{Name: Warm, Pullers: 1, Bound: 16, CutAfter: 64, Devices: []NodeResult{{Device: "device2", Seconds: f(23.5)}}},
	}
	for i := range r.Scenarios {
		r.Scenarios[i].summarize(r.ImageBytes)
	}
	var buf bytes.Buffer
	if err := r.SVG(&buf); err != nil {
		t.Fatal(err)
	}
	var xs [][]float64 // x of each polyline's points
	arrows := 0
	for _, se := range svgElements(t, buf.Bytes()) {
		for _, a := range se.Attr {
			switch {
			case se.Name.Local == "polyline" && a.Name.Local == "points":
				var line []float64
				for _, p := range strings.Fields(a.Value) {
					var x, y float64
					if _, err := fmt.Sscanf(p, "%g,%g", &x, &y); err != nil {
						t.Fatalf("point %q: %v", p, err)
					}
					line = append(line, x)
				}
				xs = append(xs, line)
			case se.Name.Local == "path" && a.Name.Local == "fill":
				arrows++
			}
		}
	}
	if len(xs) != 3 || arrows != 1 {
		t.Fatalf("%d curves, %d arrows; want 3 and the baseline's arrow", len(xs), arrows)
	}
	right := float64(marginL + innerW)
	for i, line := range xs {
		for _, x := range line {
			if x < marginL || x > right+0.05 {
				t.Errorf("curve %d: x %.1f outside the plot [%d, %.0f]", i, x, marginL, right)
			}
		}
	}
	// Warm ends at 23.5 s of an axis of 50 s: near the middle, not squeezed.
	if end := slices.Max(xs[2]); end < marginL+0.4*innerW {
		t.Errorf("warm ends at x %.1f, in the left 40%% of the plot", end)
	}
}

// svgElements parses svg, failing unless it is well-formed XML, and returns
// its elements in order.
func svgElements(t *testing.T, svg []byte) []xml.StartElement {
	t.Helper()
	var out []xml.StartElement
	dec := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("fleet.svg is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			out = append(out, se.Copy())
		}
	}
}
