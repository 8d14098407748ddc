package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/prefetch"
)

type prefetchFlags struct {
	nodeURL   string
	file      string
	selects   []string
	platforms []string
	timeout   time.Duration
	noPin     bool
	interval  time.Duration
}

func (c *cli) prefetchCmd() *cobra.Command {
	var f prefetchFlags
	cmd := &cobra.Command{
		Use:   "prefetch REF... [-f FILE]",
		Short: "Roll images out to the fleet: every selected device pulls them, then this waits for all",
		Long: `Give the node an order to prefetch images; it spreads the order by gossip and
every member whose labels match --select pulls each whole image (index,
manifests, configs, layers) through the mesh and pins it. A device that joins
later or was offline gets the order when it comes back, until the deadline.

One progress line per device is shown. The command exits 0 when every
selected device reports the images complete, and non-zero with a table of
the devices that failed or did not finish within --timeout.

REF is [registry/]repo[:tag][@digest]; without a registry it names the
node's default upstream (nginx:1.27 is docker.io/library/nginx:1.27 there).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.prefetch(cmd.Context(), cmd.InOrStdin(), f, args)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.nodeURL, "node", defaultNodeURL, "URL of the node's registry API that takes the order")
	fs.StringVarP(&f.file, "file", "f", "", "read references from FILE, one per line (# comments; - for stdin)")
	fs.StringArrayVar(&f.selects, "select", nil, "only devices with label KEY=VALUE (repeatable: all must match; none: every device)")
	fs.StringArrayVar(&f.platforms, "platform", nil, "only OS/ARCH[/VARIANT] of multi-platform images (repeatable; none: all)")
	fs.DurationVar(&f.timeout, "timeout", prefetch.DefaultTimeout, "deadline of the order: devices stop trying, and this command stops waiting, after it")
	fs.BoolVar(&f.noPin, "no-pin", false, "do not pin the images (quota eviction may remove them later)")
	fs.DurationVar(&f.interval, "poll", 500*time.Millisecond, "how often to ask the node for progress")
	_ = fs.MarkHidden("poll")
	return cmd
}

// prefetch makes the order and follows it until every selected device is
// done with it, or the timeout.
func (c *cli) prefetch(ctx context.Context, stdin io.Reader, f prefetchFlags, args []string) error {
	refs := append([]string(nil), args...)
	if f.file != "" {
		more, err := readRefList(stdin, f.file)
		if err != nil {
			return err
		}
		refs = append(refs, more...)
	}
	if len(refs) == 0 {
		return usageError{cmd: "imgmesh prefetch", err: errors.New("no image reference: give REF arguments or -f FILE")}
	}
	selector, err := parseSelect(f.selects)
	if err != nil {
		return err
	}
	if f.interval <= 0 {
		f.interval = 500 * time.Millisecond
	}
	api, err := newNodeAPI(f.nodeURL)
	if err != nil {
		return err
	}
	start := time.Now()
	giveUp := start.Add(f.timeout + 10*time.Second) // our own clock: the node's may differ
	created, err := postOrder(ctx, api, prefetch.Request{Refs: refs, Selector: selector, Platforms: f.platforms,
		Timeout: f.timeout.String(), NoPin: f.noPin})
	if err != nil {
		return err
	}
	o := created.Order
	out := c.stdout
	fmt.Fprintf(out, "order %s: %d image(s) to %s, deadline %s\n", o.ID, len(o.Refs), selectorText(o.Selector),
		o.Deadline.Local().Format(time.TimeOnly))

	view := newProgressView(out)
	var st prefetch.Status
	var lastErr error
	fails := 0 // polls in a row the node did not answer
	for {
		s, err := getOrder(ctx, api, o.ID)
		if err == nil {
			if fails >= warnAfterFails {
				fmt.Fprintf(c.stderr, "imgmesh: node %s answers again\n", api.shown)
			}
			st, lastErr, fails = s, nil, 0
			view.draw(st)
			complete, failed, waiting := tally(st)
			switch {
			case len(st.Members) == 0:
				return fmt.Errorf("no alive device matches %s; the order stays in the fleet for devices that join until %s",
					selectorText(o.Selector), o.Deadline.Local().Format(time.DateTime))
			case waiting == 0 && failed == 0:
				fmt.Fprintf(out, "all %d device(s) complete in %s\n", complete, time.Since(start).Round(100*time.Millisecond))
				return nil
			case waiting == 0:
				failureTable(out, st, false)
				return fmt.Errorf("%d of %d device(s) failed (order %s)", failed, len(st.Members), o.ID)
			}
		} else {
			lastErr = err
			if fails++; fails == warnAfterFails && ctx.Err() == nil {
				fmt.Fprintf(c.stderr, "imgmesh: %v; still waiting until %s (the order goes on in the fleet)\n",
					err, giveUp.Local().Format(time.TimeOnly))
			}
		}
		if time.Now().After(giveUp) {
			if lastErr != nil {
				return fmt.Errorf("order %s: deadline passed; last answer: %w", o.ID, lastErr)
			}
			failureTable(out, st, true)
			_, failed, waiting := tally(st)
			return fmt.Errorf("%d of %d device(s) not complete at the deadline (order %s)", failed+waiting, len(st.Members), o.ID)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stopped waiting; order %s goes on in the fleet until %s", o.ID, o.Deadline.Local().Format(time.DateTime))
		case <-time.After(f.interval):
		}
	}
}

// warnAfterFails is how many polls in a row the node may leave unanswered
// before the command says so (it keeps waiting).
const warnAfterFails = 3

// tally counts the selected members by outcome.
func tally(st prefetch.Status) (complete, failed, waiting int) {
	for _, m := range st.Members {
		switch {
		case m.Gone && (m.Report == nil || m.Report.State != prefetch.Complete):
			failed++ // forgotten by the fleet: it will not report again
		case m.Report == nil || !m.Report.Final():
			waiting++
		case m.Report.State == prefetch.Complete:
			complete++
		default:
			failed++
		}
	}
	return complete, failed, waiting
}

// failureTable lists the devices that are not complete and why.
func failureTable(w io.Writer, st prefetch.Status, deadline bool) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tPROGRESS\tATTEMPTS\tERROR")
	for _, m := range st.Members {
		r := m.Report
		if r != nil && r.State == prefetch.Complete {
			continue
		}
		state, progress, attempts, msg := "no report", "-", "0", "-"
		if r != nil {
			state, progress, attempts = string(r.State), bytesText(r), fmt.Sprint(r.Attempts)
			if r.Error != "" {
				msg = r.Error
			}
			if r.State == prefetch.Failed && !r.RetryAt.IsZero() {
				msg += fmt.Sprintf(" (the device retries at %s)", r.RetryAt.Local().Format(time.TimeOnly))
			}
		}
		if deadline && (r == nil || !r.Final()) {
			state = "timed out (" + state + ")"
		}
		switch {
		case m.Gone:
			state += ", gone from the fleet"
		case m.Unreachable:
			state += ", unreachable"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.Name, state, progress, attempts, msg)
	}
	_ = tw.Flush()
}

// progressView shows one line per device: redrawn in place on a terminal,
// a new line on each change otherwise.
type progressView struct {
	w     io.Writer
	tty   bool
	lines int               // lines drawn last time (terminal)
	last  map[string]string // device → what was printed (plain)
	when  map[string]time.Time
}

func newProgressView(w io.Writer) *progressView {
	return &progressView{w: w, tty: canRedraw(w), last: map[string]string{}, when: map[string]time.Time{}}
}

func (v *progressView) draw(st prefetch.Status) {
	width := 6
	for _, m := range st.Members {
		width = max(width, len(m.Name))
	}
	var buf bytes.Buffer
	if v.tty && v.lines > 0 {
		fmt.Fprintf(&buf, "\x1b[%dA", v.lines) // back to the first line of the block
	}
	for _, m := range st.Members {
		line := fmt.Sprintf("%-*s  %s%s", width, m.Name, progressText(m.Report, v.tty), reachText(m))
		if v.tty {
			buf.WriteString("\x1b[2K" + line + "\n")
			continue
		}
		state := "waiting"
		if m.Report != nil {
			state = string(m.Report.State)
		}
		state += reachText(m)
		// Plain output: a line when the state changes, and every 5 s while pulling.
		if prev, ok := v.last[m.Name]; ok && prev == state && (state != string(prefetch.Pulling) || time.Since(v.when[m.Name]) < 5*time.Second) {
			continue
		}
		v.last[m.Name], v.when[m.Name] = state, time.Now()
		buf.WriteString(line + "\n")
	}
	if v.tty {
		for i := len(st.Members); i < v.lines; i++ {
			buf.WriteString("\x1b[2K\n") // the block shrank: blank what is left
		}
		v.lines = max(v.lines, len(st.Members))
	}
	_, _ = v.w.Write(buf.Bytes())
}

// reachText marks a member the fleet lost: "  (unreachable)" or
// "  (gone from the fleet)"; "" for one that is there.
func reachText(m prefetch.MemberStatus) string {
	switch {
	case m.Gone:
		return "  (gone from the fleet)"
	case m.Unreachable:
		return "  (unreachable)"
	}
	return ""
}

// progressText is "pulling  [#####-----]  50%  10 MiB / 20 MiB" (the bar on
// a terminal only).
func progressText(r *prefetch.Report, bar bool) string {
	if r == nil {
		return "waiting"
	}
	s := fmt.Sprintf("%-8s", r.State)
	pct := 0
	if r.Total > 0 {
		pct = int(r.Done * 100 / r.Total)
	}
	if r.State == prefetch.Complete {
		pct = 100
	}
	if bar {
		const n = 20
		s += "  [" + strings.Repeat("#", pct*n/100) + strings.Repeat("-", n-pct*n/100) + "]"
	}
	s += fmt.Sprintf(" %3d%%  %s", pct, bytesText(r))
	if r.State == prefetch.Failed && r.Error != "" {
		s += "  " + r.Error
	}
	if r.State == prefetch.Failed && !r.Final() {
		s += fmt.Sprintf("  (retrying at %s)", r.RetryAt.Local().Format(time.TimeOnly))
	}
	return s
}

func bytesText(r *prefetch.Report) string {
	return humanize.IBytes(uint64(max(r.Done, 0))) + " / " + humanize.IBytes(uint64(max(r.Total, 0)))
}

func selectorText(sel map[string]string) string {
	if len(sel) == 0 {
		return "every device"
	}
	return "devices with " + labels(sel)
}

// canRedraw reports whether w is a terminal whose TERM can move the cursor.
func canRedraw(w io.Writer) bool {
	return os.Getenv("TERM") != "dumb" && isTerminal(w)
}

func parseSelect(ss []string) (map[string]string, error) {
	sel := map[string]string{}
	for _, s := range ss {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--select %q: want LABEL=VALUE", s)
		}
		sel[k] = v
	}
	return sel, nil
}

// postOrder sends the order to the node.
func postOrder(ctx context.Context, api *nodeAPI, req prefetch.Request) (admin.PrefetchCreated, error) {
	var created admin.PrefetchCreated
	err := api.call(ctx, http.MethodPost, admin.PrefetchPath, req, http.StatusCreated, &created, 10*time.Second)
	return created, err
}

// getOrder asks the node how order id goes.
func getOrder(ctx context.Context, api *nodeAPI, id string) (prefetch.Status, error) {
	var st prefetch.Status
	err := api.call(ctx, http.MethodGet, admin.PrefetchPath+"/"+id, nil, http.StatusOK, &st, 10*time.Second)
	return st, err
}
