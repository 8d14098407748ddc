// Command serve benchmarks how fast an imgmesh node serves a blob from its
// store, side by side with Debian's docker-registry (distribution 2.8.2) and
// nginx with sendfile, and how much memory a node uses idle and during a
// cold pull-through. Everything runs on 127.0.0.1.
//
//	go run ./bench/serve [-size 1GiB] [-runs 5] [-out bench/results]
//
// It prints a Markdown report and writes results.md and results.json.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// config is the command line.
type config struct {
	size     int64
	runs     int
	out      string
	imgmesh  string // binary; built from this module when empty
	registry string
	nginx    string
	idle     time.Duration
	timeout  time.Duration
	tmpBase  string
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	var cfg config
	var size string
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&size, "size", "1GiB", "blob size (e.g. 256MiB, 1GiB)")
	fs.IntVar(&cfg.runs, "runs", 5, "GET runs per server, interleaved")
	fs.StringVar(&cfg.out, "out", "bench/results", "directory for results.md and results.json")
	fs.StringVar(&cfg.imgmesh, "imgmesh", "", "imgmesh binary (default: go build ./cmd/imgmesh into the temp dir)")
	fs.StringVar(&cfg.registry, "registry", "/usr/bin/docker-registry", "docker-registry binary")
	fs.StringVar(&cfg.nginx, "nginx", "nginx", "nginx binary (skipped when not found)")
	fs.DurationVar(&cfg.idle, "idle", 3*time.Second, "how long a node idles after start before its idle RSS is read")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "bound on the whole run")
	fs.StringVar(&cfg.tmpBase, "tmp", "", "where to make the temp dir (default $TMPDIR)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	n, err := humanize.ParseBytes(size)
	if err != nil || n == 0 || cfg.runs < 1 {
		fmt.Fprintf(stderr, "serve: want -size > 0 and -runs ≥ 1 (size %q: %v)\n", size, err)
		return 2
	}
	cfg.size = int64(n)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	tmp, err := os.MkdirTemp(cfg.tmpBase, "imgmesh-bench-")
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp) // runs after StopAll: processes first, then files
	ps := &benchkit.Procs{}
	defer ps.StopAll()

	res, err := bench(ctx, cfg, ps, tmp, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	res.markdown(stdout)
	if err := res.write(cfg.out); err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "wrote %s\n", filepath.Join(cfg.out, "results.{md,json}"))
	if len(res.Failures) > 0 {
		return 1
	}
	return 0
}

// Names of the servers in the report.
const (
	nameNode     = "imgmesh node (store)"
	nameRegistry = "docker-registry 2.8.2"
	nameNginx    = "nginx (sendfile on)"
)

// Goals from issue 2.
const (
	goalVsRegistry   = 1.2
	goalVsNginx      = 0.9
	goalIdleRSS      = 60e6
	goalPullThrouRSS = 120e6
)

// target is one server measured side by side.
type target struct {
	srv  *Server
	base string // scheme://host:port
	url  string // of the blob
	proc *benchkit.Proc
}

func bench(ctx context.Context, cfg config, ps *benchkit.Procs, tmp string, log io.Writer) (*Results, error) {
	step := func(format string, a ...any) { fmt.Fprintf(log, "· "+format+"\n", a...) }
	res := &Results{Date: time.Now().UTC().Format(time.RFC3339), Machine: Machine{Machine: benchkit.ReadMachine()}, SizeBytes: cfg.size, Runs: cfg.runs}

	bin := cfg.imgmesh
	if bin == "" {
		bin = filepath.Join(tmp, "imgmesh")
		step("building imgmesh")
		if err := benchkit.BuildImgmesh(ctx, bin); err != nil {
			return nil, err
		}
	}
	nginx, nginxErr := exec.LookPath(cfg.nginx)
	if nginxErr != nil && cfg.nginx == "nginx" {
		nginx, nginxErr = exec.LookPath("/usr/sbin/nginx")
	}
	res.Machine.Imgmesh = strings.TrimPrefix(benchkit.CommandOutput(ctx, bin, "version"), "imgmesh ")
	// "/usr/bin/docker-registry github.com/docker/distribution 2.8.2+ds1"
	_, res.Machine.Registry, _ = strings.Cut(benchkit.CommandOutput(ctx, cfg.registry, "--version"), " ")
	if nginxErr == nil {
		res.Machine.Nginx = strings.TrimPrefix(benchkit.CommandOutput(ctx, nginx, "-v"), "nginx version: ")
	}

	step("writing a %s random blob", benchkit.SizeString(cfg.size))
	b, err := benchkit.MakeBlob(filepath.Join(tmp, "blob"), cfg.size)
	if err != nil {
		return nil, err
	}
	client := benchkit.NewClient()
	defer client.CloseIdleConnections()
	xfer := benchkit.TransferTimeout(cfg.size)

	step("starting the imgmesh node and docker-registry")
	nodeA, nodeURL, err := startNode(ctx, ps, bin, "imgmesh node", filepath.Join(tmp, "node-a"), "")
	if err != nil {
		return nil, err
	}
	reg, regURL, err := startRegistry(ctx, ps, cfg.registry, filepath.Join(tmp, "registry"))
	if err != nil {
		return nil, err
	}
	if err := idle(ctx, cfg.idle); err != nil {
		return nil, err
	}
	idleA, err := benchkit.ReadMemory(nodeA.PID())
	if err != nil {
		return nil, err
	}
	res.mem(fmt.Sprintf("node idle (VmRSS %s after start, empty store)", cfg.idle), idleA.RSS, goalIdleRSS)

	targets := []target{
		{srv: &Server{Name: nameNode}, base: nodeURL, url: blobURL(nodeURL, b), proc: nodeA},
		{srv: &Server{Name: nameRegistry}, base: regURL, url: blobURL(regURL, b), proc: reg},
	}
	for _, t := range targets {
		step("pushing the blob to %s", t.srv.Name)
		if err := push(ctx, client, t.base, b, xfer); err != nil {
			return nil, fmt.Errorf("push to %s: %w\nlog: %s", t.srv.Name, err, t.proc.Tail())
		}
	}
	ng := &Server{Name: nameNginx}
	if nginxErr != nil {
		ng.Skipped = "nginx not found"
		fmt.Fprintf(log, "note: nginx not found (%v): skipped\n", nginxErr)
	} else {
		p, base, err := startNginx(ctx, ps, nginx, filepath.Join(tmp, "nginx"), b.Path)
		if err != nil {
			return nil, err
		}
		targets = append(targets, target{srv: ng, base: base, url: base + "/blob", proc: p})
	}

	// One verified GET each: proves every server returns the right bytes
	// and warms the page cache before anything is timed.
	for _, t := range targets {
		step("verifying %s", t.srv.Name)
		if _, err := benchkit.Get(ctx, client, t.url, b.Size, b.Digest, true, xfer); err != nil {
			return nil, fmt.Errorf("%s: %w\nlog: %s", t.srv.Name, err, t.proc.Tail())
		}
	}
	for i := range cfg.runs {
		for _, t := range targets {
			d, err := benchkit.Get(ctx, client, t.url, b.Size, b.Digest, false, xfer)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w\nlog: %s", t.srv.Name, i+1, err, t.proc.Tail())
			}
			t.srv.GBps = append(t.srv.GBps, benchkit.Gbps(b.Size, d))
		}
		step("run %d/%d done", i+1, cfg.runs)
	}
	for _, t := range targets {
		t.srv.Median, t.srv.Best = stats(t.srv.GBps)
		res.Servers = append(res.Servers, *t.srv)
	}
	if ng.Skipped != "" {
		res.Servers = append(res.Servers, *ng)
		res.Notes = append(res.Notes, "nginx was not found, so the nginx column and ratio are missing.")
	}
	res.ratio("imgmesh / docker-registry", &res.Servers[0], &res.Servers[1], goalVsRegistry)
	if ng.Skipped == "" {
		res.ratio("imgmesh / nginx", &res.Servers[0], &res.Servers[2], goalVsNginx)
	}

	// A failed pull-through is a finding, not a broken benchmark: the
	// serving numbers above stand, and the report says what failed.
	if err := pullThrough(ctx, cfg, ps, tmp, bin, regURL, b, res, step); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		res.Failures = append(res.Failures, err.Error())
	}
	for _, t := range targets {
		m, err := benchkit.ReadMemory(t.proc.PID())
		if err != nil {
			return nil, err
		}
		res.mem(t.srv.Name+": peak (VmHWM) after push and all GETs", m.Peak, 0)
	}
	return res, nil
}

// pullThrough starts a second node whose only upstream is the registry,
// reads its idle RSS, then times one cold GET of the blob through it and
// reads its peak RSS. A verified GET afterwards proves what it stored.
func pullThrough(ctx context.Context, cfg config, ps *benchkit.Procs, tmp, bin, regURL string, b benchkit.Blob,
	res *Results, step func(string, ...any)) error {
	step("starting a second node with docker-registry as its upstream")
	hc := benchkit.NewClient()
	defer hc.CloseIdleConnections()
	nodeB, base, err := startNode(ctx, ps, bin, "imgmesh node B", filepath.Join(tmp, "node-b"), "bench="+regURL)
	if err != nil {
		return err
	}
	if err := idle(ctx, cfg.idle); err != nil {
		return err
	}
	idleB, err := benchkit.ReadMemory(nodeB.PID())
	if err != nil {
		return err
	}
	res.mem("pull-through node idle (VmRSS, upstream configured)", idleB.RSS, 0)
	step("cold pull-through of %s", benchkit.SizeString(b.Size))
	xfer := benchkit.TransferTimeout(b.Size)
	d, getErr := benchkit.Get(ctx, hc, blobURL(base, b)+"?ns=bench", b.Size, b.Digest, false, xfer)
	m, err := benchkit.ReadMemory(nodeB.PID())
	if err != nil {
		return err
	}
	res.mem(fmt.Sprintf("node peak (VmHWM) during a cold %s pull-through", benchkit.SizeString(b.Size)), m.Peak, goalPullThrouRSS)
	if getErr != nil {
		return fmt.Errorf("cold pull-through: %w (node log: %s)", getErr, nodeB.Tail())
	}
	res.PullThrough = &PullThrough{Seconds: d.Seconds(), GBps: benchkit.Gbps(b.Size, d)}
	step("verifying what the pull-through node serves now")
	if _, err := benchkit.Get(ctx, hc, blobURL(base, b)+"?ns=bench", b.Size, b.Digest, true, xfer); err != nil {
		return fmt.Errorf("GET after pull-through: %w (node log: %s)", err, nodeB.Tail())
	}
	return nil
}

// idle waits d unless ctx ends first: the time a node is left alone
// before its idle memory is read.
func idle(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
