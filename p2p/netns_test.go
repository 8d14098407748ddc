package p2p_test

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/p2p/routertest"
)

// netnsLab is a bridge in a hub namespace with one namespace per node on
// it. Nothing is created in the caller's namespace, so multicast DNS never
// leaves the lab.
type netnsLab struct {
	t     *testing.T
	hub   string
	nodes []string
	ips   []string // node i's address on the bridge
	procs []*exec.Cmd
}

func (l *netnsLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cleanup kills the probes by PID, then deletes the links and namespaces;
// it runs even when the test failed half way.
func (l *netnsLab) cleanup() {
	for _, c := range l.procs {
		if c.Process != nil {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
	for i := range l.nodes {
		_ = exec.Command("ip", "-n", l.hub, "link", "del", fmt.Sprintf("vh%d", i)).Run()
	}
	for _, ns := range append([]string{l.hub}, l.nodes...) {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			l.t.Logf("ip netns del %s: %v %s", ns, err, out)
		}
	}
}

func newNetnsLab(t *testing.T, n int) *netnsLab {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (ip netns); CI runs it as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the ip command (iproute2) is missing: %v", err)
		}
		t.Skipf("the ip command (iproute2) is missing: %v", err)
	}
	tag := fmt.Sprintf("imp2p%d-%d", os.Getpid(), rand.IntN(1e6))
	l := &netnsLab{t: t, hub: tag + "-hub"}
	t.Cleanup(l.cleanup)
	subnet := fmt.Sprintf("10.%d.%d", 200+rand.IntN(50), rand.IntN(250))
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.hub, "link", "set", "br0", "up")
	for i := range n {
		ns := fmt.Sprintf("%s-%d", tag, i)
		l.nodes = append(l.nodes, ns)
		vh := fmt.Sprintf("vh%d", i)
		l.ip("netns", "add", ns)
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", l.hub, "link", "add", vh, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.hub, "link", "set", vh, "master", "br0")
		l.ip("-n", l.hub, "link", "set", vh, "up")
		l.ips = append(l.ips, fmt.Sprintf("%s.%d", subnet, i+1))
		l.ip("-n", ns, "addr", "add", l.ips[i]+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
	}
	return l
}

type probe struct {
	stdin io.WriteCloser
	lines chan string
}

// start runs the probe (this test binary) inside node i's namespace.
func (l *netnsLab) start(i int, env ...string) *probe {
	l.t.Helper()
	c := exec.Command("ip", "netns", "exec", l.nodes[i], os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), append(env, probeEnv+"=1")...)
	stdin, err := c.StdinPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		l.t.Fatal(err)
	}
	logf, err := os.Create(fmt.Sprintf("%s/probe%d.log", l.t.TempDir(), i))
	if err != nil {
		l.t.Fatal(err)
	}
	c.Stderr = logf
	if err := c.Start(); err != nil {
		l.t.Fatal(err)
	}
	l.procs = append(l.procs, c)
	p := &probe{stdin: stdin, lines: make(chan string, 16)}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	l.t.Cleanup(func() {
		if l.t.Failed() || os.Getenv("P2P_TEST_LOG") != "" {
			b, _ := os.ReadFile(logf.Name())
			l.t.Logf("probe %d log (tail):\n%s", i, tail(string(b), 30))
		}
		logf.Close()
	})
	return p
}

// expect returns the rest of the next line starting with word.
func (p *probe) expect(t *testing.T, word string, deadline time.Time) []string {
	t.Helper()
	var skipped []string
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("probe exited before saying %s; it said %q", word, skipped)
			}
			if f := strings.Fields(line); len(f) > 0 && f[0] == word {
				return f[1:]
			}
			skipped = append(skipped, line)
		case <-time.After(time.Until(deadline)):
			t.Fatalf("probe did not say %s in time; it said %q", word, skipped)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// TestMDNSInNetworkNamespaces: three nodes, each in its own namespace on
// one bridge, with mDNS and no bootstrap, find each other; a key advertised
// by one (before it knew anyone) is found by the others, with a data URL on
// the bridge's subnet, never a loopback one.
func TestMDNSInNetworkNamespaces(t *testing.T) {
	const n = 3
	l := newNetnsLab(t, n)
	key := routertest.Key()
	probes := make([]*probe, n)
	for i := range n {
		env := []string{fmt.Sprintf("%s=%d", probePeers, n-1), fmt.Sprintf("%s=%d", probeDataPort, 5000+i)}
		if i == 0 {
			env = append(env, probeAdvertise+"="+key)
		} else {
			env = append(env, probeLookup+"="+key)
		}
		probes[i] = l.start(i, env...)
	}
	deadline := time.Now().Add(30 * time.Second)
	ids := make([]string, n)
	for i, p := range probes {
		ids[i] = p.expect(t, "READY", deadline)[0]
	}
	start := time.Now()
	for i, p := range probes {
		peers := p.expect(t, "PEERS", deadline)
		for j, id := range ids {
			if j == i {
				continue
			}
			want := fmt.Sprintf("%s@http://%s:%d", id, l.ips[j], 5000+j)
			if !slices.Contains(peers, want) {
				t.Fatalf("node %d peers %v, want %s among them", i, peers, want)
			}
		}
	}
	t.Logf("all nodes found each other by mDNS %v after start", time.Since(start).Round(time.Millisecond))
	for i, p := range probes[1:] {
		got := p.expect(t, "FOUND", deadline)
		want := []string{ids[0], fmt.Sprintf("http://%s:5000", l.ips[0])}
		if !slices.Equal(got, want) {
			t.Fatalf("node %d found %v, want %v", i+1, got, want)
		}
	}
	for _, p := range probes {
		p.stdin.Close()
	}
	for i, c := range l.procs {
		if err := c.Wait(); err != nil {
			t.Errorf("probe %d: %v", i, err)
		}
	}
}
