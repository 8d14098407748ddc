package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// The image the fleet pulls.
const (
	imageRepo = "bench/fleet"
	imageTag  = "v1"
)

// env is what the scenarios of one run share.
type env struct {
	cfg      Config
	log      io.Writer
	img      *Image
	size     int64 // S
	nw       network
	up       *Upstream
	upURL    string
	ps       *benchkit.Procs
	tmp      string
	nodeArgs []string // the benchmark's extra serve flags, then the user's
	throttle bool     // loopback: the baseline's devices read at B
}

// step logs progress.
func (e *env) step(format string, a ...any) { fmt.Fprintf(e.log, "· "+format+"\n", a...) }

// Run builds the network, serves the image from an upstream of its own,
// runs each scenario of cfg in turn and returns the results. Progress goes
// to log. Everything it started or made is stopped and removed before it
// returns (namespaces, data and logs are kept with cfg.Keep), also when ctx
// is cancelled.
func Run(ctx context.Context, cfg Config, log io.Writer) (res *Results, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if !cfg.Loopback {
		if err := CheckNetns(); err != nil {
			return nil, err
		}
	}
	e := &env{cfg: cfg, log: log, ps: &benchkit.Procs{}}
	e.step("generating a %s image in %d layers", benchkit.SizeString(cfg.Size), cfg.Layers)
	if e.img, err = MakeImage(imageRepo, imageTag, cfg.Size, cfg.Layers, cfg.Seed); err != nil {
		return nil, err
	}
	e.size = e.img.Size()
	if e.tmp, err = os.MkdirTemp("", "imgmesh-bench-fleet-"); err != nil {
		return nil, err
	}
	defer func() {
		if !cfg.Keep {
			os.RemoveAll(e.tmp) // after the nodes stopped (deferred later, runs first)
		} else {
			e.step("kept data and node logs in %s", e.tmp)
		}
	}()

	res = &Results{Date: time.Now().UTC().Format(time.RFC3339), Machine: benchkit.ReadMachine(),
		Mode: "netns", Simulation: cfg.Loopback, Nodes: cfg.Nodes, ImageBytes: e.size, Layers: cfg.Layers,
		LinkBits: cfg.Link * 8, UplinkBits: cfg.Uplink * 8}
	res.Machine.Imgmesh = strings.TrimPrefix(benchkit.CommandOutput(ctx, cfg.Bin, "version"), "imgmesh ")
	var limit *Limiter
	if cfg.Loopback {
		res.Mode = "loopback"
		e.nw = newLoopback()
		limit = NewLimiter(cfg.Uplink, 64<<10)
		e.throttle = true
		if rf := rateFlags(ctx, cfg.Bin, cfg.Link); rf != nil {
			e.nodeArgs = rf
			res.Notes = append(res.Notes, "Device links: each node capped at B by its own --max-upload-rate/--max-download-rate; the baseline's devices read at B.")
		} else {
			res.Notes = append(res.Notes, "Device links are NOT shaped (this imgmesh has no --max-upload-rate/--max-download-rate): the nodes move bytes at loopback speed, so p100/bound may fall below 1. Only the baseline's devices read at B.")
		}
	} else {
		e.step("building the network: %d device namespaces, a bridge, an upstream namespace", cfg.Nodes)
		lab, err := newLab(ctx, cfg.Nodes, cfg.Link, cfg.Uplink)
		if err != nil {
			return nil, err
		}
		e.nw = lab
	}
	defer func() {
		kept, cerr := e.nw.close(cfg.Keep)
		if kept != "" {
			e.step("%s", kept)
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up the network: %w", cerr))
		}
	}()
	res.Network = e.nw.describe()
	e.nodeArgs = append(e.nodeArgs, cfg.NodeArgs...)

	ln, base, err := e.nw.listenUpstream()
	if err != nil {
		return nil, err
	}
	e.up, e.upURL = NewUpstream(e.img, limit), base
	srv := &http.Server{Handler: e.up, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	defer e.ps.StopAll() // runs first: nodes stop before the network goes

	for _, sc := range cfg.Scenarios {
		start := time.Now()
		r, err := e.scenario(ctx, sc)
		e.ps.StopAll()
		if !cfg.Keep {
			os.RemoveAll(filepath.Join(e.tmp, string(sc)))
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sc, err)
		}
		e.step("%s took %s", sc, time.Since(start).Round(100*time.Millisecond))
		res.Scenarios = append(res.Scenarios, r)
	}
	res.Goals = goals(res.Scenarios)
	return res, nil
}

// scenario sets up sc, lets its devices pull at once, and measures.
func (e *env) scenario(ctx context.Context, sc Scenario) (ScenarioResult, error) {
	cfg := e.cfg
	r := ScenarioResult{Name: sc}
	pullers := make([]int, cfg.Nodes)
	for i := range pullers {
		pullers[i] = i
	}
	var nodes []*node
	base := func(i int) string { return nodes[i].base() }
	cut := func(bound time.Duration) time.Duration {
		floor := cfg.minCut
		if floor == 0 {
			floor = MinTimeout
		}
		return max(time.Duration(cfg.TimeoutFactor*float64(bound)), floor)
	}
	var deadline time.Duration
	project := false
	switch sc {
	case Baseline:
		base = func(int) string { return e.upURL }
		r.Bound, r.BoundFormula = secs(Bound(cfg.Nodes, e.size, cfg.Uplink, cfg.Link)), "max(S/u, S/B, N*S/(u+N*B))"
		deadline = cut(BaselineTime(cfg.Nodes, e.size, cfg.Uplink, cfg.Link))
		if cfg.BaselineBudget > 0 && cfg.BaselineBudget < deadline {
			deadline, project = cfg.BaselineBudget, true
		}
	case Cold, Warm:
		spec := nodeSpec{bin: cfg.Bin, upstream: e.upURL, extra: e.nodeArgs, dir: filepath.Join(e.tmp, string(sc))}
		e.step("%s: starting %d nodes", sc, cfg.Nodes)
		var err error
		if nodes, err = startNodes(ctx, e.ps, e.nw, cfg.Nodes, spec); err != nil {
			return r, err
		}
		r.Bound, r.BoundFormula = secs(Bound(cfg.Nodes, e.size, cfg.Uplink, cfg.Link)), "max(S/u, S/B, N*S/(u+N*B))"
		if sc == Warm {
			e.step("warm: pushing the image into node1")
			pctx, cancel := context.WithTimeout(ctx, benchkit.TransferTimeout(e.size))
			err := Push(pctx, nodes[0].c, nodes[0].base(), e.img)
			cancel()
			if err != nil {
				return r, fmt.Errorf("push the image into node1: %w", err)
			}
			if st, err := nodes[0].status(ctx); err != nil || st.StoreBytes < e.size-int64(len(e.img.Manifest)) {
				return r, fmt.Errorf("node1 holds %d bytes after the push of %d (%v)", st.StoreBytes, e.size, err)
			}
			pullers = pullers[1:]
			r.Bound, r.BoundFormula = secs(WarmBound(e.size, cfg.Link)), "S/B"
		}
		deadline = cut(time.Duration(r.Bound * float64(time.Second)))
	}
	var throttle func(int) *Limiter
	if sc == Baseline && e.throttle {
		lims := make([]*Limiter, cfg.Nodes)
		for i := range lims {
			lims[i] = NewLimiter(cfg.Link, 64<<10)
		}
		throttle = func(i int) *Limiter { return lims[i] }
	}

	e.step("%s: %d devices pull %s at once (cut after %s)", sc, len(pullers), benchkit.SizeString(e.size), deadline.Round(time.Second))
	e.up.Reset()
	outs, err := e.pullAll(ctx, sc, pullers, base, throttle, deadline)
	if err != nil {
		return r, err
	}
	r.UpstreamBytes = e.up.Served()
	r.CutAfter = secs(deadline)
	r.Pullers = len(pullers)
	var received int64
	for _, o := range outs {
		nr := NodeResult{Device: fmt.Sprintf("device%d", o.device+1), Bytes: o.bytes}
		received += o.bytes
		switch {
		case o.err == nil:
			s := secs(o.elapsed)
			nr.Seconds = &s
		case o.timedOut && project:
			nr.Projected = true // its time is set below
		case o.timedOut:
			nr.Error = fmt.Sprintf("not finished after %s (%d of %d bytes)", deadline.Round(time.Second), o.bytes, e.size)
		default:
			nr.Error = o.err.Error()
			r.Errors = append(r.Errors, nr.Device+": "+o.err.Error())
		}
		if nodes != nil {
			if st, err := nodes[o.device].status(ctx); err == nil {
				nr.Fetched = st.FetchedBytes
			}
		}
		r.Devices = append(r.Devices, nr)
	}
	if project && received > 0 {
		e.projectBaseline(&r, float64(received)/secs(deadline))
	}
	r.summarize(e.size)
	return r, nil
}

// projectBaseline gives the baseline's devices that were cut the time
// they would have finished: the uplink's measured rate (rate, bytes/s)
// shared fairly among the devices still pulling, none above its link
// (see ProjectShared). What they still lack must all come from the
// upstream, so it is added to the bytes it served.
func (e *env) projectBaseline(r *ScenarioResult, rate float64) {
	var idx []int
	var remaining []float64
	for i, d := range r.Devices {
		if d.Projected {
			idx = append(idx, i)
			remaining = append(remaining, float64(e.size-d.Bytes))
			r.UpstreamBytes += e.size - d.Bytes
		}
	}
	for k, t := range ProjectShared(r.CutAfter, remaining, rate, e.cfg.Link) {
		r.Devices[idx[k]].Seconds = &t
	}
	r.Projected = len(idx) > 0
}
