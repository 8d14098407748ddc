package fleet

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
)

// Plot geometry, in SVG user units.
const (
	plotW, plotH   = 800, 440
	marginL        = 64
	marginR        = 24
	marginT        = 64
	marginB        = 52
	innerW, innerH = plotW - marginL - marginR, plotH - marginT - marginB
)

// scenarioColor draws each scenario in its own color.
var scenarioColor = map[Scenario]string{Baseline: "#7f7f7f", Cold: "#1f77b4", Warm: "#2ca02c"}

// SVG draws completion over time: for each scenario, the fraction of its
// devices done against seconds since they started, as a step line, with
// its bound as a dotted vertical line. A scenario whose devices did not all
// finish ends in a cross at its cut; projected times are dashed.
func (r *Results) SVG(w io.Writer) error {
	bw := bufio.NewWriter(w)
	xmax := niceCeil(r.xExtent() * 1.05)
	x := func(s float64) float64 { return marginL + s/xmax*innerW }
	y := func(f float64) float64 { return marginT + (1-f)*innerH }

	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", plotW, plotH)
	fmt.Fprintf(bw, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", marginL, esc("imgmesh bench fleet: devices done over time"))
	fmt.Fprintf(bw, `<text x="%d" y="42" fill="#333">%s</text>`+"\n", marginL, esc(r.title()))
	// Axes, grid and ticks.
	step := xmax / 5
	for i := 0; i <= 5; i++ {
		s := step * float64(i)
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x(s), marginT, x(s), marginT+innerH)
		fmt.Fprintf(bw, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(s), marginT+innerH+18, trimFloat(s))
	}
	for _, f := range []float64{0, 0.25, 0.5, 0.75, 1} {
		fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", marginL, y(f), marginL+innerW, y(f))
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end">%d%%</text>`+"\n", marginL-6, y(f)+4, int(f*100))
	}
	fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", marginL, marginT, innerW, innerH)
	fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="middle">seconds since every device started pulling</text>`+"\n", marginL+innerW/2, plotH-12)
	fmt.Fprintf(bw, `<text transform="translate(16 %d) rotate(-90)" text-anchor="middle">devices done</text>`+"\n", marginT+innerH/2)

	for k, s := range r.Scenarios {
		color := scenarioColor[s.Name]
		if s.Bound > 0 && s.Bound <= xmax {
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="2 3"/>`+"\n", x(s.Bound), marginT, x(s.Bound), marginT+innerH, color)
			fmt.Fprintf(bw, `<text x="%.1f" y="%d" fill="%s" font-size="10">bound %s</text>`+"\n", x(s.Bound)+3, marginT+innerH-6-12*k, color, s.Name)
		}
		times, cut := s.curve()
		dash := ""
		if s.Projected {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(bw, `<polyline fill="none" stroke="%s" stroke-width="2"%s points="%.1f,%.1f`, color, dash, x(0), y(0))
		n := float64(max(s.Pullers, 1))
		beyond := -1.0 // the fraction done where the line leaves the plot
		for i, t := range times {
			if t > xmax { // projected past the axis: the legend has the time
				beyond = float64(i) / n
				fmt.Fprintf(bw, " %.1f,%.1f", x(xmax), y(beyond))
				break
			}
			fmt.Fprintf(bw, " %.1f,%.1f %.1f,%.1f", x(t), y(float64(i)/n), x(t), y(float64(i+1)/n))
		}
		if cut && beyond < 0 {
			fmt.Fprintf(bw, " %.1f,%.1f", x(s.CutAfter), y(float64(len(times))/n))
		}
		fmt.Fprintln(bw, `"/>`)
		if beyond >= 0 {
			ax, ay := x(xmax), y(beyond)
			fmt.Fprintf(bw, `<path d="M%.1f %.1fl-9 -5v10z" fill="%s"/>`+"\n", ax, ay, color)
		}
		if cut {
			cx, cy := x(s.CutAfter), y(float64(len(times))/n)
			fmt.Fprintf(bw, `<path d="M%.1f %.1fl8 8m0 -8l-8 8" stroke="%s" stroke-width="2"/>`+"\n", cx-4, cy-4, color)
		}
		// Legend, top left inside the plot.
		ly := marginT + 16 + 18*k
		fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"%s/>`+"\n", marginL+10, ly-4, marginL+34, ly-4, color, dash)
		fmt.Fprintf(bw, `<text x="%d" y="%d">%s</text>`+"\n", marginL+40, ly, esc(s.legend()))
	}
	fmt.Fprintln(bw, "</svg>")
	return bw.Flush()
}

// curve is the sorted completion times of the devices that finished (or
// were projected to), and whether some did not finish before the cut.
func (s ScenarioResult) curve() ([]float64, bool) {
	var ts []float64
	for _, d := range s.Devices {
		if d.Seconds != nil {
			ts = append(ts, *d.Seconds)
		}
	}
	slices.Sort(ts)
	return ts, len(ts) < s.Pullers
}

func (s ScenarioResult) legend() string {
	l := fmt.Sprintf("%s: p100 ", s.Name)
	switch {
	case s.P100 == nil:
		l += fmt.Sprintf(">%.0f s (%d/%d done)", s.CutAfter, s.Done, s.Pullers)
	case s.Projected:
		l += fmt.Sprintf("~%.1f s (projected)", *s.P100)
	default:
		l += fmt.Sprintf("%.1f s", *s.P100)
	}
	return l + fmt.Sprintf(", upstream %.2f×S", s.UpstreamRatio)
}

// xExtent is the latest time the plot must show: completions, cuts, bounds.
// A projected scenario counts up to its cut only: a baseline projected to
// ten times the others would squeeze them into the plot's left edge.
func (r *Results) xExtent() float64 {
	m := 0.0
	for _, s := range r.Scenarios {
		m = max(m, s.Bound)
		ts, cut := s.curve()
		if len(ts) > 0 && !s.Projected {
			m = max(m, ts[len(ts)-1])
		}
		if cut || s.Projected {
			m = max(m, s.CutAfter)
		}
	}
	if m <= 0 || math.IsNaN(m) || math.IsInf(m, 0) {
		return 1
	}
	return m
}

// niceCeil rounds v up to 1, 2, 2.5 or 5 times a power of ten, so that a
// fifth of it is a round tick.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(f float64) string { return fmt.Sprintf("%g", math.Round(f*100)/100) }

func esc(s string) string { return html.EscapeString(s) }
