package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sys/unix"
)

// TestMDNSInNetns: three nodes, each in its own network namespace on a
// bridge the test made, find each other by mDNS alone (no --join, no
// --bootstrap). A blob pushed to node 1 is pulled through nodes 2 and 3
// from their peers (there is no upstream). Every interface the test makes
// lives in its namespaces, so multicast never reaches the host's networks.
func TestMDNSInNetns(t *testing.T) {
	t.Parallel()
	lab := newNetnsLab(t, 3)
	ctx := testContext(t, 2*time.Minute)
	var nodes []*meshNode
	for i, ns := range lab.nodes {
		n := &meshNode{
			imgmeshNode: &imgmeshNode{addr: "127.0.0.1:5000", dataDir: t.TempDir()},
			name:        fmt.Sprintf("mdns%d", i+1),
			client:      netnsClient(t, ns),
			prefix:      []string{"ip", "netns", "exec", ns},
		}
		n.args = []string{"serve", "--data-dir", n.dataDir, "--listen", n.addr,
			"--log-format", "json", "--log-level", "debug", "--upstream", "none",
			"--mdns=true", "--p2p-listen", "/ip4/0.0.0.0/tcp/4001",
			"--gossip-listen", "0.0.0.0:7946", "--data-listen", "0.0.0.0:5002",
			"--node-name", n.name, "--lookup-timeout", lookupTimeout}
		n.launch(t)
		nodes = append(nodes, n)
	}
	stopTogether(t, nodes...)
	for _, n := range nodes {
		n.waitReady(t)
	}
	start := time.Now()
	waitFleetSize(ctx, t, nodes, 3, 60*time.Second)
	t.Logf("3 nodes found each other by mDNS in %s", time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		for _, p := range n.peers(ctx, t) {
			if !strings.HasPrefix(p.Gossip, lab.subnet+".") {
				t.Errorf("%s lists %s at gossip address %q, want one on the lab's bridge %s.0/24", n.name, p.Name, p.Gossip, lab.subnet)
			}
		}
	}

	const repo, size = "test/lan", 4 << 20
	layer, data := randomBlob(t, size)
	d := sha256Digest(data)
	r, err := name.NewRepository(nodes[0].addr+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, layer, remote.WithContext(ctx), remote.WithTransport(nodes[0].client.Transport)); err != nil {
		t.Fatalf("push to mdns1: %v", err)
	}
	for _, n := range nodes[1:] {
		pullOnceKnown(t, n.name+" pulls the blob", 10*time.Second, func() error {
			resp, err := n.pullBlob(ctx, repo, d, "")
			return checkPull(n.name+" blob", resp, err, data, d)
		})
		if st := n.status(ctx, t); st.FetchedBytes["peer"] != size {
			t.Errorf("%s fetched %v, want the blob's %d bytes from peers", n.name, st.FetchedBytes, size)
		}
	}
}

// netnsLab is a bridge in a hub namespace with one namespace per node on
// it, all made by the test: nothing is created in the caller's namespace.
type netnsLab struct {
	t      *testing.T
	hub    string
	nodes  []string
	subnet string // 10.X.Y: the nodes are .1, .2, ...
}

func newNetnsLab(t *testing.T, n int) *netnsLab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces (ip netns); CI runs as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		msg := fmt.Sprintf("the ip command (iproute2) is missing: %v", err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	tag := fmt.Sprintf("imt-%d-%d", os.Getpid(), rand.IntN(1e6))
	l := &netnsLab{t: t, hub: tag + "-hub", subnet: fmt.Sprintf("10.%d.%d", 200+rand.IntN(50), rand.IntN(250))}
	t.Cleanup(l.cleanup) // registered first: runs after the nodes are stopped
	l.ip("netns", "add", l.hub)
	l.ip("-n", l.hub, "link", "set", "lo", "up")
	l.ip("-n", l.hub, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	l.ip("-n", l.hub, "link", "set", "br0", "up")
	for i := range n {
		ns, vh := fmt.Sprintf("%s-%d", tag, i+1), fmt.Sprintf("vh%d", i+1)
		l.nodes = append(l.nodes, ns)
		l.ip("netns", "add", ns)
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.ip("-n", l.hub, "link", "add", vh, "type", "veth", "peer", "name", "eth0", "netns", ns)
		l.ip("-n", l.hub, "link", "set", vh, "master", "br0")
		l.ip("-n", l.hub, "link", "set", vh, "up")
		l.ip("-n", ns, "addr", "add", fmt.Sprintf("%s.%d/24", l.subnet, i+1), "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
	}
	return l
}

func (l *netnsLab) ip(args ...string) {
	l.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		l.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cleanup deletes the links, then the namespaces, even after a failure.
// The nodes were stopped by PID before (their cleanups ran first).
func (l *netnsLab) cleanup() {
	for i := range l.nodes {
		_ = exec.Command("ip", "-n", l.hub, "link", "del", fmt.Sprintf("vh%d", i+1)).Run()
	}
	for _, ns := range append([]string{l.hub}, l.nodes...) {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			l.t.Errorf("ip netns del %s: %v %s", ns, err, out)
		}
	}
}

// netnsClient is an HTTP client whose connections are made inside network
// namespace ns (127.0.0.1 there is that namespace's loopback).
func netnsClient(t *testing.T, ns string) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 16,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(ctx, ns, network, addr)
		}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// dialInNetns opens the socket from a thread that entered namespace ns
// and went back before it ran anything else; the socket keeps its
// namespace. The thread must survive: a child started from it with
// Pdeathsig (startProc) would be killed if it ended.
func dialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			} // else the thread, stuck in ns, ends with this goroutine
		}()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			restored = true
			ch <- result{err: err}
			return
		}
		defer home.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			restored = true
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			restored = true
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		restored = unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}
