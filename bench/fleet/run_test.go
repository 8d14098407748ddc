package fleet

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
	"github.com/imgmesh/imgmesh/internal/testlog"
)

// imgmeshBin is the binary the runs start, built once when a test needs it.
var (
	buildOnce  sync.Once
	imgmeshBin string
	buildErr   error
	binDir     string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "fleet: leaked goroutines:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "imgmesh-fleet-test-"); buildErr != nil {
			return
		}
		imgmeshBin = filepath.Join(binDir, "imgmesh")
		buildErr = benchkit.BuildImgmesh(context.Background(), imgmeshBin)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return imgmeshBin
}

// smallRun is a run of n devices pulling a tiny image at a high rate.
func smallRun(t *testing.T, n int, size int64) Config {
	cfg := Defaults()
	cfg.Nodes, cfg.Size, cfg.Layers = n, size, 2
	cfg.Link, cfg.Uplink = 1e9/8, 400e6/8
	cfg.Bin = testBinary(t)
	cfg.Out = t.TempDir()
	cfg.minCut = 8 * time.Second
	return cfg
}

// checkRun asserts what any run must show: every scenario with its
// pullers, the baseline complete with each device's bytes from the
// upstream, every finished device holding the whole verified image, and
// no pull failed on wrong content.
func checkRun(t *testing.T, cfg Config, res *Results, log string) {
	t.Helper()
	if len(res.Scenarios) != len(cfg.Scenarios) {
		t.Fatalf("%d scenarios, want %d\n%s", len(res.Scenarios), len(cfg.Scenarios), log)
	}
	for _, s := range res.Scenarios {
		want := cfg.Nodes
		if s.Name == Warm {
			want--
		}
		if s.Pullers != want || len(s.Devices) != want {
			t.Errorf("%s: %d pullers, %d devices; want %d", s.Name, s.Pullers, len(s.Devices), want)
		}
		for _, d := range s.Devices {
			if d.Seconds != nil && !d.Projected && d.Bytes != res.ImageBytes {
				t.Errorf("%s %s finished with %d bytes, want the image's %d", s.Name, d.Device, d.Bytes, res.ImageBytes)
			}
		}
		if len(s.Errors) > 0 {
			t.Errorf("%s: pulls failed: %v", s.Name, s.Errors)
		}
		if s.Name == Cold || s.Name == Warm {
			t.Logf("%s: %d/%d done, p100 %v, upstream %.2f x S", s.Name, s.Done, s.Pullers, s.P100, s.UpstreamRatio)
		}
	}
	base := res.Scenarios[0]
	if base.Name != Baseline || base.Done != cfg.Nodes || base.Projected {
		t.Fatalf("baseline: %d/%d done (projected %v)\n%s", base.Done, cfg.Nodes, base.Projected, log)
	}
	// Each device pulled the whole image straight from the upstream.
	if want := int64(cfg.Nodes) * res.ImageBytes; base.UpstreamBytes != want {
		t.Errorf("baseline: upstream served %d bytes, want N x S = %d", base.UpstreamBytes, want)
	}
	if base.P100OverBound == nil || *base.P100OverBound < 0.9 {
		t.Errorf("baseline p100/bound = %v: beating the bound means the upstream was not limited", base.P100OverBound)
	}
}

// TestRunLoopback runs all three scenarios with 3 nodes of the real
// binary on 127.0.0.1 and a 2 MB image.
func TestRunLoopback(t *testing.T) {
	cfg := smallRun(t, 3, 2e6)
	cfg.Loopback = true
	cfg.Uplink = 20e6 / 8 // the in-process uplink: the baseline takes about 2.4 s
	var log testlog.Buffer
	res, err := Run(context.Background(), cfg, &log)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	checkRun(t, cfg, res, log.String())
	if !res.Simulation || res.Mode != "loopback" {
		t.Errorf("loopback run: simulation %v, mode %q", res.Simulation, res.Mode)
	}
	var md strings.Builder
	res.Markdown(&md)
	if !strings.Contains(md.String(), "SIMULATION (loopback)") {
		t.Errorf("the report does not say it is a simulation:\n%s", md.String())
	}
	if err := res.Write(cfg.Out); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"results.md", "results.json", CSVFile, SVGFile} {
		if _, err := os.Stat(filepath.Join(cfg.Out, f)); err != nil {
			t.Errorf("results: %v", err)
		}
	}
}

// TestRunNetns (root) runs the baseline and cold scenarios of 2 devices in
// network namespaces, then a run interrupted while its nodes start, and
// checks that nothing the runs made is left.
func TestRunNetns(t *testing.T) {
	if err := CheckNetns(); err != nil {
		if os.Getenv("CI") == "true" && os.Geteuid() == 0 {
			t.Fatal(err)
		}
		t.Skipf("skipping the namespaced run: %v", err)
	}
	cfg := smallRun(t, 2, 4e6)
	cfg.Scenarios = []Scenario{Baseline, Cold}
	var log testlog.Buffer
	res, err := Run(context.Background(), cfg, &log)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	checkRun(t, cfg, res, log.String())
	if res.Simulation || !strings.Contains(res.Network, "tbf") {
		t.Errorf("namespaced run: simulation %v, network %q", res.Simulation, res.Network)
	}
	// The shaping holds: 2 x 4 MB through a 400 Mbit/s uplink takes 0.16 s
	// at best.
	if p := res.Scenarios[0].P100; p == nil || *p < 0.15 {
		t.Errorf("baseline p100 %v s: faster than the shaped uplink allows", p)
	}
	checkNoNamespaces(t)

	// Ctrl-C while the cold scenario starts its nodes: everything goes.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.Scenarios = []Scenario{Cold}
	w := &cancelOn{s: "cold: starting", cancel: cancel}
	if _, err := Run(ctx, cfg, w); err == nil {
		t.Fatal("interrupted run: no error")
	}
	checkNoNamespaces(t)
}

// cancelOn cancels when the log says s.
type cancelOn struct {
	testlog.Buffer
	s      string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(c.s)) {
		c.cancel()
	}
	return c.Buffer.Write(p)
}

func checkNoNamespaces(t *testing.T) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	prefix := fmt.Sprintf("%s%d-", nsPrefix, os.Getpid())
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}

// TestNewLabFailsCleanly: a network that cannot be built (interrupted at
// once; as root also a device link tc refuses) is an error, not a crash,
// and leaves no namespace behind.
func TestNewLabFailsCleanly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if l, err := newLab(ctx, 2, 1e6, 1e6); err == nil || l != nil {
		t.Fatalf("newLab, interrupted: %v, %v; want an error and no lab", l, err)
	}
	checkNoNamespaces(t)
	if err := CheckNetns(); err != nil {
		t.Skipf("skipping the half-built network: %v", err)
	}
	// The hub and the upstream's namespace are made, then the first device's
	// tbf fails: tc takes no rate of 0.
	l, err := newLab(context.Background(), 2, 0, 1e6)
	if err == nil || l != nil || !strings.Contains(err.Error(), "tbf") {
		t.Fatalf("newLab, device rate 0: %v, %v; want tc's error and no lab", l, err)
	}
	checkNoNamespaces(t)
}
