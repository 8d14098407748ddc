package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// meshNode is one `imgmesh serve` process that is part of a fleet.
type meshNode struct {
	*imgmeshNode
	name   string
	gossip string       // host:port of its gossip (for --join)
	client *http.Client // reaches its registry API (netns-aware in a lab)
	prefix []string     // command prefix, e.g. ip netns exec NS
	killed atomic.Bool  // killed on purpose: a non-zero exit is expected
}

// meshOptions are the flags of one fleet member.
type meshOptions struct {
	key      string   // fleet key file; "" = open fleet
	join     []string // gossip addresses to join
	upstream []string // upstream flags; nil = --upstream none
	extra    []string
}

// lookupTimeout is generous: under -race on two busy cores a lookup must not
// fall back to upstream by timing alone.
const lookupTimeout = "500ms"

// launchMeshNode starts a fleet member on loopback (mDNS off, every port
// on 127.0.0.1) without waiting for it; see waitReady.
func launchMeshNode(t *testing.T, name string, o meshOptions) *meshNode {
	t.Helper()
	n := &meshNode{
		imgmeshNode: &imgmeshNode{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), dataDir: t.TempDir()},
		name:        name,
		gossip:      fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		client:      httpClient(t),
	}
	n.args = []string{"serve", "--data-dir", n.dataDir, "--listen", n.addr,
		"--log-format", "json", "--log-level", "debug", "--tag-timeout", "1s",
		"--mdns=false", "--p2p-listen", "/ip4/127.0.0.1/tcp/0",
		"--gossip-listen", n.gossip, "--data-listen", "127.0.0.1:0",
		"--node-name", name, "--lookup-timeout", lookupTimeout}
	for _, j := range o.join {
		n.args = append(n.args, "--join", j)
	}
	if o.key != "" {
		n.args = append(n.args, "--fleet-key", o.key)
	}
	if o.upstream == nil {
		n.args = append(n.args, "--upstream", "none")
	}
	n.args = append(append(n.args, o.upstream...), o.extra...)
	n.launch(t)
	return n
}

// startMeshNode is launchMeshNode, then waitReady.
func startMeshNode(t *testing.T, name string, o meshOptions) *meshNode {
	t.Helper()
	return launchReady(t, name, o, nil)
}

// startFleet starts n members named node1..nodeN; all but the first join
// the first's gossip. They start together, then each is waited for.
func startFleet(t *testing.T, n int, o meshOptions) []*meshNode {
	t.Helper()
	seed := launchReady(t, "node1", o, nil)
	nodes := []*meshNode{seed}
	o.join = append(slices.Clone(o.join), seed.gossip)
	for i := 2; i <= n; i++ {
		nodes = append(nodes, launchMeshNode(t, fmt.Sprintf("node%d", i), o))
	}
	for i, m := range nodes[1:] {
		nodes[i+1] = launchReady(t, m.name, o, m)
	}
	stopTogether(t, nodes...)
	return nodes
}

// launchReady waits until node n (launched now if nil) is ready. freePort
// cannot reserve a port: under parallel tests another process may bind it
// first, and the node then exits; it is started again on new ports.
func launchReady(t *testing.T, name string, o meshOptions, n *meshNode) *meshNode {
	t.Helper()
	for attempt := 1; ; attempt++ {
		if n == nil {
			n = launchMeshNode(t, name, o)
		}
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) && !n.proc.exited() {
			if resp, err := n.client.Get(n.url("/readyz")); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return n
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if !n.proc.exited() || attempt == 3 || !strings.Contains(n.proc.log(t), "address already in use") {
			n.waitReady(t) // fails the test with the node's log
			return n
		}
		n.killed.Store(true) // it exited: its cleanup need not expect a clean stop
		t.Logf("%s lost its port to another process (attempt %d); starting it again", name, attempt)
		n = nil
	}
}

// stopTogether sends SIGTERM to every node at once when the test ends (a
// graceful leave takes about a second each) and waits for them; each
// node's own cleanup, which runs after, then checks how it exited.
func stopTogether(t *testing.T, nodes ...*meshNode) {
	t.Helper()
	t.Cleanup(func() {
		for _, n := range nodes {
			if !n.proc.exited() {
				_ = syscall.Kill(n.proc.pid, syscall.SIGCONT)
				n.proc.terminate()
			}
		}
		start := time.Now()
		deadline := time.NewTimer(15 * time.Second)
		defer deadline.Stop()
		for _, n := range nodes {
			select {
			case <-n.proc.done:
				if took := time.Since(start); took > 3*time.Second {
					t.Logf("%s (pid %d) took %s to stop on SIGTERM", n.name, n.proc.pid, took.Round(time.Millisecond))
				}
			case <-deadline.C:
				return // the nodes' own cleanups report and kill the rest
			}
		}
	})
}

// launch starts the process; at cleanup it is thawed and stopped, and its
// log is searched for race reports.
func (n *meshNode) launch(t *testing.T) {
	t.Helper()
	argv := append(append(slices.Clone(n.prefix), imgmeshBin), n.args...)
	p := startProc(t, n.name, noInternet, argv...)
	n.proc = p
	t.Cleanup(func() {
		_ = syscall.Kill(p.pid, syscall.SIGCONT) // a frozen node cannot handle SIGTERM
		if err := p.stop(t); err != nil && !n.killed.Load() {
			t.Errorf("%s (pid %d) did not exit cleanly on SIGTERM: %v", n.name, p.pid, err)
		}
		if log := p.log(t); strings.Contains(log, "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in %s (pid %d):\n%s", n.name, p.pid, raceReport(log))
		}
	})
}

// waitReady waits until /readyz says 200.
func (n *meshNode) waitReady(t *testing.T) {
	t.Helper()
	poll(t, n.name+" /readyz", 30*time.Second, n.proc, func() error {
		resp, err := n.client.Get(n.url("/readyz"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /readyz: %s", resp.Status)
		}
		return nil
	})
}

// kill sends SIGKILL to the node (by PID) and waits until it is gone.
func (n *meshNode) kill(t *testing.T) {
	t.Helper()
	n.killed.Store(true)
	if err := syscall.Kill(n.proc.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill %s (pid %d): %v", n.name, n.proc.pid, err)
	}
	<-n.proc.done
}

// freeze stops the process (SIGSTOP): its sockets stay open, nothing moves.
func (n *meshNode) freeze(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(n.proc.pid, syscall.SIGSTOP); err != nil {
		t.Fatalf("SIGSTOP %s: %v", n.name, err)
	}
}

// thaw resumes a frozen process.
func (n *meshNode) thaw(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(n.proc.pid, syscall.SIGCONT); err != nil {
		t.Fatalf("SIGCONT %s: %v", n.name, err)
	}
}

// nodeStatus is GET /api/v1/status as the wire carries it.
type nodeStatus struct {
	Version      string             `json:"version"`
	NodeName     string             `json:"node_name"`
	PeerID       string             `json:"peer_id"`
	P2PAddrs     []string           `json:"p2p_addrs"`
	FleetSize    int                `json:"fleet_size"`
	StoreBytes   int64              `json:"store_bytes"`
	StoreBlobs   int64              `json:"store_blobs"`
	ServedBytes  map[string]float64 `json:"served_bytes"`
	FetchedBytes map[string]float64 `json:"fetched_bytes"`
}

// fleetPeer is one entry of GET /api/v1/peers.
type fleetPeer struct {
	Name     string   `json:"name"`
	State    string   `json:"state"`
	Gossip   string   `json:"gossip"`
	PeerID   string   `json:"peer_id"`
	P2PAddrs []string `json:"p2p_addrs"`
	Registry string   `json:"registry"`
	Self     bool     `json:"self"`
}

// getJSON GETs path from the node's API into v.
func (n *meshNode) getJSON(ctx context.Context, path string, v any) error {
	r, err := do(ctx, n.client, http.MethodGet, n.url(path), nil)
	if err != nil {
		return err
	}
	if r.status != http.StatusOK || r.readErr != nil {
		return fmt.Errorf("%s GET %s: %d %v", n.name, path, r.status, r.readErr)
	}
	if err := json.Unmarshal(r.body, v); err != nil {
		return fmt.Errorf("%s GET %s: %w: %s", n.name, path, err, r.body)
	}
	return nil
}

func (n *meshNode) status(ctx context.Context, t *testing.T) nodeStatus {
	t.Helper()
	var st nodeStatus
	if err := n.getJSON(ctx, "/api/v1/status", &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func (n *meshNode) peers(ctx context.Context, t *testing.T) []fleetPeer {
	t.Helper()
	var ps []fleetPeer
	if err := n.getJSON(ctx, "/api/v1/peers", &ps); err != nil {
		t.Fatal(err)
	}
	return ps
}

// waitFleetSize polls until every node's status says fleet_size == size.
func waitFleetSize(ctx context.Context, t *testing.T, nodes []*meshNode, size int, timeout time.Duration) {
	t.Helper()
	for _, n := range nodes {
		poll(t, fmt.Sprintf("%s fleet_size %d", n.name, size), timeout, n.proc, func() error {
			var st nodeStatus
			if err := n.getJSON(ctx, "/api/v1/status", &st); err != nil {
				return err
			}
			if st.FleetSize != size {
				return fmt.Errorf("fleet_size %d", st.FleetSize)
			}
			return nil
		})
	}
}

// fleetKeyFile writes a new fleet key made by `imgmesh keygen`.
func fleetKeyFile(ctx context.Context, t *testing.T) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, imgmeshBin, "keygen")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("imgmesh keygen: %v", err)
	}
	path := filepath.Join(t.TempDir(), "fleet.key")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// dataAddr is the data-plane address the node logged when its mesh started.
func (n *meshNode) dataAddr(t *testing.T) string {
	t.Helper()
	for line := range strings.SplitSeq(n.proc.log(t), "\n") {
		var rec struct {
			Msg  string `json:"msg"`
			Data string `json:"data"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "mesh started" && rec.Data != "" {
			return rec.Data
		}
	}
	t.Fatalf("%s never logged its data-plane address", n.name)
	return ""
}

// pullManifest GETs repo's manifest ref (tag or digest), with ?ns= when ns is set.
func (n *meshNode) pullManifest(ctx context.Context, repo, ref, ns string) (response, error) {
	return do(ctx, n.client, http.MethodGet, n.url("/v2/"+repo+"/manifests/"+ref+nsQuery(ns)), manifestAccept)
}

// pullBlob GETs blob d of repo, with ?ns= when ns is set.
func (n *meshNode) pullBlob(ctx context.Context, repo, d, ns string) (response, error) {
	return do(ctx, n.client, http.MethodGet, n.url("/v2/"+repo+"/blobs/"+d+nsQuery(ns)), nil)
}

func nsQuery(ns string) string {
	if ns == "" {
		return ""
	}
	return "?ns=" + ns
}

// errNotFound: the node answered 404 (the fleet may not know yet).
var errNotFound = errors.New("404")

// checkPull is nil when r is a 200 whose body is want, byte for byte.
func checkPull(what string, r response, err error, want []byte, wantDigest string) error {
	switch {
	case err != nil:
		return fmt.Errorf("%s: %w", what, err)
	case r.status == http.StatusNotFound:
		return fmt.Errorf("%s: %w: %.300s", what, errNotFound, r.body)
	case r.status != http.StatusOK:
		return fmt.Errorf("%s: status %d: %.300s", what, r.status, r.body)
	case r.readErr != nil:
		return fmt.Errorf("%s: body cut short after %d bytes: %v", what, len(r.body), r.readErr)
	case sha256Digest(r.body) != wantDigest || len(r.body) != len(want):
		return fmt.Errorf("%s: got %d bytes with digest %s, want %d bytes %s", what, len(r.body), sha256Digest(r.body), len(want), wantDigest)
	}
	return nil
}

// pullOnceKnown retries pull while it fails with 404 only, until timeout:
// content just pushed to one node reaches the others' lookups when its
// announcement has (see TestFleetServesPushAtOnce for the immediate case).
// Any other failure ends it at once.
func pullOnceKnown(t *testing.T, what string, timeout time.Duration, pull func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for tries := 1; ; tries++ {
		err := pull()
		switch {
		case err == nil:
			if tries > 1 {
				t.Logf("%s: served after %d tries", what, tries)
			}
			return
		case !errors.Is(err, errNotFound):
			t.Fatalf("%s: %v", what, err)
		case time.Now().After(deadline):
			t.Fatalf("%s: still not found after %s (%d tries): %v", what, timeout, tries, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
