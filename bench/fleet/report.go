package fleet

import (
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Files written into the results folder.
const (
	CSVFile = "results.csv"
	SVGFile = "fleet.svg"
)

// Write saves results.md, results.json, results.csv and the plot in dir.
func (r *Results) Write(dir string) error {
	if err := benchkit.WriteResults(dir, r.Markdown, r); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(dir, CSVFile))
	if err != nil {
		return err
	}
	if err := r.CSV(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", CSVFile, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	g, err := os.Create(filepath.Join(dir, SVGFile))
	if err != nil {
		return err
	}
	if err := r.SVG(g); err != nil {
		g.Close()
		return fmt.Errorf("%s: %w", SVGFile, err)
	}
	return g.Close()
}

// title is the run in a line.
func (r *Results) title() string {
	t := fmt.Sprintf("%d devices, image S = %s in %d layers, device link B = %s, uplink u = %s",
		r.Nodes, mb(r.ImageBytes), r.Layers, FormatRate(r.LinkBits/8), FormatRate(r.UplinkBits/8))
	if r.Simulation {
		t = "SIMULATION (loopback): " + t
	}
	return t
}

// Markdown writes the report: the table, the goals, the notes.
func (r *Results) Markdown(w io.Writer) {
	fmt.Fprintf(w, "# imgmesh bench fleet\n\n%s\n\n", r.title())
	fmt.Fprintf(w, "%s. imgmesh %s, %d CPUs (%s), kernel %s, %s.\n\n", r.Network, r.Machine.Imgmesh, r.Machine.NProc, r.Machine.CPU, r.Machine.Kernel, r.Date)
	fmt.Fprintln(w, "| scenario | done | p50 | p100 | upstream bytes / S | bound | p100 / bound |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, s := range r.Scenarios {
		tilde := ""
		if s.Projected {
			tilde = "~"
		}
		fmt.Fprintf(w, "| %s | %d/%d | %s | %s | %s%.2f | %.1f s (%s) | %s |\n", s.Name, s.Done, s.Pullers,
			tilde+cell(s.P50, s), tilde+cell(s.P100, s), tilde, s.UpstreamRatio, s.Bound, s.BoundFormula, ratioCell(s))
	}
	if len(r.Goals) > 0 {
		fmt.Fprintln(w, "\n| goal | value | target | met |\n| --- | --- | --- | --- |")
		for _, g := range r.Goals {
			v := "not finished"
			if g.Value != nil {
				v = fmt.Sprintf("%.2f", *g.Value)
			}
			fmt.Fprintf(w, "| %s | %s | ≤ %.2f | %s |\n", g.Name, v, g.Target, benchkit.Yes(g.Met))
		}
	}
	fmt.Fprintln(w)
	for _, s := range r.Scenarios {
		if s.Projected {
			fmt.Fprintf(w, "- %s: cut after %.0f s; values marked ~ are projected: the uplink's measured rate shared fairly by the devices still pulling (none above B); upstream bytes are what it served until then plus what the devices still lacked.\n", s.Name, s.CutAfter)
		} else if s.Done < s.Pullers {
			fmt.Fprintf(w, "- %s: %d of %d devices had not finished when the pulls were cut after %.0f s; upstream bytes counted until then.\n", s.Name, s.Pullers-s.Done, s.Pullers, s.CutAfter)
		}
		for _, e := range s.Errors {
			fmt.Fprintf(w, "- %s: error: %s\n", s.Name, e)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	fmt.Fprintf(w, "- Times are seconds from the moment every device started pulling until its last blob verified; p50 is nearest-rank. Plot: %s.\n", SVGFile)
}

// cell prints a time, or ">cut" when the devices did not finish.
func cell(v *float64, s ScenarioResult) string {
	if v == nil {
		return fmt.Sprintf(">%.0f s", s.CutAfter)
	}
	return fmt.Sprintf("%.1f s", *v)
}

func ratioCell(s ScenarioResult) string {
	switch {
	case s.P100OverBound != nil && s.Projected:
		return fmt.Sprintf("~%.2f", *s.P100OverBound)
	case s.P100OverBound != nil:
		return fmt.Sprintf("%.2f", *s.P100OverBound)
	case s.Bound > 0:
		return fmt.Sprintf(">%.2f", s.CutAfter/s.Bound)
	}
	return "–"
}

// CSV writes one row per device and scenario.
func (r *Results) CSV(w io.Writer) error {
	cw := csv.NewWriter(w)
	_ = cw.Write([]string{"scenario", "device", "done", "seconds", "projected", "bytes", "upstream_bytes", "bound_s", "error"})
	for _, s := range r.Scenarios {
		for _, d := range s.Devices {
			secs := ""
			if d.Seconds != nil {
				secs = strconv.FormatFloat(*d.Seconds, 'f', 3, 64)
			}
			_ = cw.Write([]string{string(s.Name), d.Device, strconv.FormatBool(d.Seconds != nil && !d.Projected), secs,
				strconv.FormatBool(d.Projected), strconv.FormatInt(d.Bytes, 10), strconv.FormatInt(s.UpstreamBytes, 10),
				strconv.FormatFloat(s.Bound, 'f', 3, 64), d.Error})
		}
	}
	cw.Flush()
	return cw.Error()
}

// mb prints bytes in decimal megabytes, as link rates are decimal.
func mb(n int64) string {
	if n >= 1e6 {
		return strconv.FormatFloat(float64(n)/1e6, 'f', 1, 64) + " MB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
