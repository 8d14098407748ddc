package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/imgmesh/imgmesh/bench/fleet"
)

func (c *cli) benchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Benchmarks: how fast a fleet gets a new image",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(c.benchFleetCmd(), c.benchLinksCmd())
	return cmd
}

// benchLinksCmd is `imgmesh bench links`: what the benchmark's shaped
// network carries between devices, pattern by pattern, without imgmesh.
func (c *cli) benchLinksCmd() *cobra.Command {
	var (
		nodes    int
		link     string
		duration time.Duration
	)
	cmd := &cobra.Command{
		Use:   "links",
		Short: "What the benchmark's shaped network carries between devices, for three traffic patterns",
		Long: `Build bench fleet's network (root: namespaces, a bridge, tc tbf on every link)
with no imgmesh in it, and measure the bytes per second all devices receive
from each other for: long streams (each device reads from 4 others), random
1 MiB pieces (6 requests out per device to random others, 4 served at once,
503 beyond: how imgmesh's swarm asks) and sticky pieces (4 requests out,
each staying with a device until refused; 4 served at once). It prints each
as a share of what the links carry (N·B): the ceiling of that way of asking.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rate, err := fleet.ParseRate(link)
			if err != nil {
				return fmt.Errorf("--link: %w", err)
			}
			if nodes < 2 || nodes > 200 {
				return fmt.Errorf("--nodes %d: want 2 to 200", nodes)
			}
			if duration < time.Second || duration > 10*time.Minute {
				return fmt.Errorf("--duration %s: want 1s to 10m", duration)
			}
			if err := fleet.CheckNetns(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := fleet.ProbeLinks(ctx, nodes, rate, duration, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("bench links: %w", err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%d devices, links of %s each way, %s per pattern\n\n", nodes, fleet.FormatRate(rate), duration)
			fmt.Fprintln(w, "| pattern | received, all devices | of N·B |")
			fmt.Fprintln(w, "| --- | --- | --- |")
			for _, r := range res {
				fmt.Fprintf(w, "| %s | %.1f MB/s | %.2f |\n", r.Pattern, r.BytesPerS/1e6, r.OfLinks)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&nodes, "nodes", 10, "devices N")
	fs.StringVar(&link, "link", "100Mbit", "each device's link rate B, each direction")
	fs.DurationVar(&duration, "duration", 8*time.Second, "how long each pattern runs")
	return cmd
}

// benchFleetFlags is the command line of `imgmesh bench fleet`.
type benchFleetFlags struct {
	nodes, layers       int
	size, link, uplink  string
	out, scenarios, bin string
	loopback, keep      bool
	timeoutFactor       float64
	baselineBudget      time.Duration
	nodeArgs            []string
	seed                uint64
}

func (c *cli) benchFleetCmd() *cobra.Command {
	d := fleet.Defaults()
	var f benchFleetFlags
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Every device pulls a new image at once: baseline, imgmesh cold and warm, side by side",
		Long: `Measure a rollout: N devices pull the same new image (S bytes in L layers) at
the same moment, each on a link of B, behind an uplink of u. Three scenarios
run side by side: baseline (every device straight from the upstream), cold
(every device through its own imgmesh node, nothing cached) and warm (one node
already holds the image). For each it prints the devices' completion p50 and
p100, the upstream bytes over S, the bound max(S/u, S/B, N*S/(u+N*B)) (S/B for
warm) and p100 over the bound, and writes results.md, results.json,
results.csv and fleet.svg into --out.

As root it builds network namespaces (a bridge in its own namespace, one per
device, one for the upstream) and shapes every link both ways with tc tbf;
everything is removed at the end, also on Ctrl-C. --loopback runs without
root on 127.0.0.1 with the upstream rate-limited in process: a simulation.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.config(d)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return c.benchFleet(ctx, cmd, cfg)
		},
	}
	fs := cmd.Flags()
	fs.IntVar(&f.nodes, "nodes", d.Nodes, "devices N, each with its own node")
	fs.StringVar(&f.size, "size", "200MB", "image size S (200MB = 200e6 bytes, 64MiB binary)")
	fs.IntVar(&f.layers, "layers", d.Layers, "layers L the image is split into")
	fs.StringVar(&f.link, "link", "100Mbit", "each device's link rate B, each direction (100Mbit, 1Gbit, 12.5MB/s)")
	fs.StringVar(&f.uplink, "uplink", "50Mbit", "the upstream's link rate u, each direction")
	fs.StringVar(&f.out, "out", d.Out, "folder for results.md, results.json, results.csv and fleet.svg")
	fs.StringVar(&f.scenarios, "scenarios", "baseline,cold,warm", "scenarios to run, comma-separated")
	fs.BoolVar(&f.loopback, "loopback", false, "no root: nodes on 127.0.0.1, upstream rate-limited in process (a simulation)")
	fs.BoolVar(&f.keep, "keep", false, "leave the namespaces, node data and logs for debugging")
	fs.Float64Var(&f.timeoutFactor, "timeout-factor", d.TimeoutFactor, "cut a scenario's pulls after this many times its bound (at least 20s)")
	fs.DurationVar(&f.baselineBudget, "baseline-budget", d.BaselineBudget, "cut the baseline after this long and project its times from each device's rate (0 = run it to the end)")
	fs.StringArrayVar(&f.nodeArgs, "node-arg", nil, "extra flag for every node's imgmesh serve, repeatable (e.g. --node-arg=--lookup-timeout=200ms)")
	fs.Uint64Var(&f.seed, "seed", d.Seed, "seed of the image's random layers")
	fs.StringVar(&f.bin, "imgmesh", "", "imgmesh binary that runs the nodes (default: this one)")
	_ = fs.MarkHidden("imgmesh")
	return cmd
}

// config turns the flags into a fleet.Config.
func (f *benchFleetFlags) config(d fleet.Config) (fleet.Config, error) {
	cfg := d
	var err error
	if cfg.Size, err = fleet.ParseSize(f.size); err != nil {
		return cfg, fmt.Errorf("--size: %w", err)
	}
	if cfg.Link, err = fleet.ParseRate(f.link); err != nil {
		return cfg, fmt.Errorf("--link: %w", err)
	}
	if cfg.Uplink, err = fleet.ParseRate(f.uplink); err != nil {
		return cfg, fmt.Errorf("--uplink: %w", err)
	}
	if cfg.Scenarios, err = fleet.ParseScenarios(f.scenarios); err != nil {
		return cfg, fmt.Errorf("--scenarios: %w", err)
	}
	cfg.Nodes, cfg.Layers, cfg.Out = f.nodes, f.layers, f.out
	cfg.Loopback, cfg.Keep, cfg.NodeArgs, cfg.Seed = f.loopback, f.keep, f.nodeArgs, f.seed
	cfg.TimeoutFactor, cfg.BaselineBudget = f.timeoutFactor, f.baselineBudget
	cfg.Bin = f.bin
	if cfg.Bin == "" {
		if cfg.Bin, err = os.Executable(); err != nil {
			return cfg, fmt.Errorf("find this binary to run the nodes: %w", err)
		}
	}
	if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		return cfg, err
	}
	return cfg, cfg.Validate()
}

func (c *cli) benchFleet(ctx context.Context, cmd *cobra.Command, cfg fleet.Config) error {
	res, err := fleet.Run(ctx, cfg, cmd.ErrOrStderr())
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bench fleet interrupted (everything it started was stopped and removed): %w", err)
		}
		return fmt.Errorf("bench fleet: %w", err)
	}
	res.Markdown(cmd.OutOrStdout())
	if err := res.Write(cfg.Out); err != nil {
		return fmt.Errorf("bench fleet: write results: %w", err)
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", filepath.Join(cfg.Out, "results.{md,json,csv} and "+fleet.SVGFile))
	var failed int
	for _, s := range res.Scenarios {
		failed += len(s.Errors)
	}
	if failed > 0 {
		return fmt.Errorf("bench fleet: %d pulls failed (not a timeout); see the errors above", failed)
	}
	return nil
}
