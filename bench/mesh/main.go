// Command mesh benchmarks the imgmesh fleet on 127.0.0.1, in one run:
//
//	(a) verified peer transfer throughput of a blob between two nodes,
//	    next to a local hit and a raw libp2p stream with the fleet PSK;
//	(b) the latency a miss gains when the fleet's peers are dead or silent;
//	(c) provider lookup latency on a 20-node fleet.
//
//	go run ./bench/mesh [-size 1GiB] [-out bench/results/mesh] [-imgmesh bin/imgmesh]
//
// It prints a Markdown report and writes results.md and results.json.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
	"github.com/imgmesh/imgmesh/fleetkey"
)

// config is the command line.
type config struct {
	size         int64
	runs         int
	fleet        int // peers in (b) and (c), besides the probe node
	misses       int // requests per fleet state in (b)
	lookups      int // HEADs in (c)
	out          string
	imgmesh      string // binary; built from this module when empty
	timeout      time.Duration
	tmpBase      string
	skipTransfer bool
	skipFleet    bool
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "mesh: %v\n", err)
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	tmp, err := os.MkdirTemp(cfg.tmpBase, "imgmesh-bench-mesh-")
	if err != nil {
		fmt.Fprintf(stderr, "mesh: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp) // runs after StopAll: processes first, then files
	ps := &benchkit.Procs{}
	defer ps.StopAll()

	e := &env{cfg: cfg, ps: ps, tmp: tmp, log: stderr}
	res, err := bench(ctx, e)
	if err != nil {
		fmt.Fprintf(stderr, "mesh: %v\n", err)
		return 1
	}
	res.markdown(stdout)
	if err := res.write(cfg.out); err != nil {
		fmt.Fprintf(stderr, "mesh: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s\n", filepath.Join(cfg.out, "results.{md,json}"))
	if len(res.Failures) > 0 {
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var cfg config
	var size string
	fs := flag.NewFlagSet("mesh", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&size, "size", "1GiB", "blob size of the peer transfer (e.g. 256MiB, 1GiB)")
	fs.IntVar(&cfg.runs, "runs", 3, "peer-transfer runs (each through a fresh node B), interleaved with local and libp2p runs")
	fs.IntVar(&cfg.fleet, "fleet", 20, "peers in the fleet of (b) and (c), besides the probe node")
	fs.IntVar(&cfg.misses, "misses", 200, "misses timed per fleet state in (b), half HEAD, half GET")
	fs.IntVar(&cfg.lookups, "lookups", 200, "lookups (HEADs of another peer's blob) timed in (c)")
	fs.StringVar(&cfg.out, "out", "bench/results/mesh", "directory for results.md and results.json")
	fs.StringVar(&cfg.imgmesh, "imgmesh", "", "imgmesh binary (default: go build ./cmd/imgmesh into the temp dir)")
	fs.DurationVar(&cfg.timeout, "timeout", 8*time.Minute, "bound on the whole run")
	fs.StringVar(&cfg.tmpBase, "tmp", "", "where to make the temp dir (default $TMPDIR)")
	fs.BoolVar(&cfg.skipTransfer, "skip-transfer", false, "skip (a)")
	fs.BoolVar(&cfg.skipFleet, "skip-fleet", false, "skip (b) and (c)")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	n, err := humanize.ParseBytes(size)
	if err != nil || n == 0 {
		return cfg, fmt.Errorf("-size %q: want a size above 0 (%v)", size, err)
	}
	cfg.size = int64(n)
	if cfg.runs < 1 || cfg.fleet < 2 || cfg.misses < 2 || cfg.lookups < 1 {
		return cfg, errors.New("want -runs ≥ 1, -fleet ≥ 2, -misses ≥ 2, -lookups ≥ 1")
	}
	return cfg, nil
}

// env is what every part of the benchmark shares.
type env struct {
	cfg     config
	ps      *benchkit.Procs
	tmp     string
	log     io.Writer
	bin     string
	key     fleetkey.Key
	keyPath string
}

// step logs progress to stderr.
func (e *env) step(format string, a ...any) { fmt.Fprintf(e.log, "· "+format+"\n", a...) }

// opts are the options of a node named name in the temp dir.
func (e *env) opts(name, upstream, lookupTimeout string) nodeOpts {
	return nodeOpts{bin: e.bin, name: name, dir: filepath.Join(e.tmp, "nodes", name), fleetKey: e.keyPath,
		upstream: upstream, lookupTimeout: lookupTimeout}
}

func bench(ctx context.Context, e *env) (*Results, error) {
	res := &Results{Date: time.Now().UTC().Format(time.RFC3339), Machine: benchkit.ReadMachine(),
		SizeBytes: e.cfg.size, Runs: e.cfg.runs}
	e.bin = e.cfg.imgmesh
	if e.bin == "" {
		e.bin = filepath.Join(e.tmp, "imgmesh")
		e.step("building imgmesh")
		if err := benchkit.BuildImgmesh(ctx, e.bin); err != nil {
			return nil, err
		}
	}
	res.Machine.Imgmesh = strings.TrimPrefix(benchkit.CommandOutput(ctx, e.bin, "version"), "imgmesh ")
	var err error
	if e.key, err = fleetkey.Generate(); err != nil {
		return nil, err
	}
	e.keyPath = filepath.Join(e.tmp, "fleet.key")
	f, err := os.OpenFile(e.keyPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	if err := errors.Join(e.key.Encode(f), f.Close()); err != nil {
		return nil, fmt.Errorf("fleet key: %w", err)
	}

	// A part that fails is reported and the next still runs; an
	// interrupt or the overall timeout ends the run.
	parts := []struct {
		name string
		skip bool
		run  func(context.Context, *env, *Results) error
	}{
		{"(a) peer transfer", e.cfg.skipTransfer, transfer},
		{"(b) misses and (c) lookups", e.cfg.skipFleet, fleet},
	}
	for _, p := range parts {
		if p.skip {
			res.Notes = append(res.Notes, p.name+" skipped (flag).")
			continue
		}
		start := time.Now()
		err := p.run(ctx, e, res)
		e.step("%s took %s", p.name, time.Since(start).Round(100*time.Millisecond))
		e.ps.StopAll() // nothing outlives its part
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", p.name, errors.Join(ctx.Err(), err))
		}
		if err != nil {
			res.Failures = append(res.Failures, fmt.Sprintf("%s: %v", p.name, err))
		}
	}
	return res, nil
}
