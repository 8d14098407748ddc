package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Timeouts of the benchmark's own requests.
const (
	readyTimeout = 30 * time.Second // a node starting on a busy machine
	fleetTimeout = 60 * time.Second // a fleet converging (gossip, libp2p, DHT)
	reqTimeout   = 5 * time.Second  // one small request (HEAD, status, metrics, small GET)
)

// node is one `imgmesh serve` process on loopback.
type node struct {
	name   string
	p      *benchkit.Proc
	base   string // http://127.0.0.1:port, the registry API
	gossip string // host:port of its gossip, read once ready
}

// nodeOpts is how a node is started. The mesh is always on, mDNS always off.
type nodeOpts struct {
	bin, name, dir, fleetKey string
	join                     []string
	upstream                 string // "none" or NAME=URL (then --restrict-upstreams)
	lookupTimeout            string // "" leaves the node's default (15ms)
}

// launch starts a node; ready waits for it.
func launch(ps *benchkit.Procs, o nodeOpts) (*node, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, err
	}
	args := []string{o.bin, "serve", "--mdns=false", "--node-name", o.name,
		"--data-dir", o.dir, "--listen", "127.0.0.1:" + strconv.Itoa(port),
		"--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--gossip-listen", "127.0.0.1:0",
		"--data-listen", "127.0.0.1:0", "--fleet-key", o.fleetKey,
		"--upstream", o.upstream, "--log-level", "warn"}
	if o.upstream != "none" {
		args = append(args, "--restrict-upstreams")
	}
	for _, j := range o.join {
		args = append(args, "--join", j)
	}
	if o.lookupTimeout != "" {
		args = append(args, "--lookup-timeout", o.lookupTimeout)
	}
	p, err := ps.Start(o.name, o.dir+".log", args...)
	if err != nil {
		return nil, err
	}
	return &node{name: o.name, p: p, base: fmt.Sprintf("http://127.0.0.1:%d", port)}, nil
}

// ready waits until the node answers and learns its gossip address.
func (n *node) ready(ctx context.Context) error {
	if err := benchkit.WaitReady(ctx, n.p, n.base+"/v2/", readyTimeout); err != nil {
		return err
	}
	var peers []admin.Peer
	if err := getJSON(ctx, n.base+admin.PeersPath, &peers); err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	for _, p := range peers {
		if p.Self {
			n.gossip = p.Gossip
		}
	}
	if n.gossip == "" {
		return fmt.Errorf("%s: no gossip address in %s", n.name, admin.PeersPath)
	}
	return nil
}

// startNodes launches nodes together and waits until all are ready.
func startNodes(ctx context.Context, ps *benchkit.Procs, opts []nodeOpts) ([]*node, error) {
	ns := make([]*node, len(opts))
	for i, o := range opts {
		if err := os.MkdirAll(filepath.Dir(o.dir), 0o755); err != nil {
			return nil, err
		}
		n, err := launch(ps, o)
		if err != nil {
			return nil, err
		}
		ns[i] = n
	}
	for _, n := range ns {
		if err := n.ready(ctx); err != nil {
			return nil, err
		}
	}
	return ns, nil
}

// fleetSeen reports whether n sees want alive members (itself included)
// and has open libp2p connections to want-1 peers.
func (n *node) fleetSeen(ctx context.Context, want int) (bool, error) {
	var st admin.Status
	if err := getJSON(ctx, n.base+admin.StatusPath, &st); err != nil {
		return false, nil // busy: ask again
	}
	if st.FleetSize < want {
		return false, nil
	}
	text, err := metricsText(ctx, n.base)
	if err != nil {
		return false, nil
	}
	return gauge(text, "imgmesh_peers") >= float64(want-1), nil
}

// waitFleet waits until every node sees want members and peers.
func waitFleet(ctx context.Context, ns []*node, want int) error {
	for _, n := range ns {
		err := benchkit.Poll(ctx, n.p, fleetTimeout, fmt.Sprintf("in a fleet of %d", want), func(ctx context.Context) (bool, error) {
			return n.fleetSeen(ctx, want)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ctl is the client of small control requests: loopback, no proxy.
var ctl = benchkit.NewClient()

func getJSON(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, reqTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := ctl.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// metricsText is the node's /metrics page.
func metricsText(ctx context.Context, base string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, reqTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := ctl.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s/metrics: %s", base, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return string(b), err
}

// push uploads size bytes from body as blob dgst to repo on a registry, in
// one monolithic POST ?digest=.
func push(ctx context.Context, client *http.Client, base, repo, dgst string, body io.Reader, size int64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := base + "/v2/" + repo + "/blobs/uploads/?digest=" + dgst
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("push %s: %w", dgst, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push %s to %s: %s: %s", dgst, base, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}

// pushBytes pushes a small in-memory blob and returns its digest.
func pushBytes(ctx context.Context, base, repo string, data []byte) (string, error) {
	d := digestOf(data)
	return d, push(ctx, ctl, base, repo, d, bytes.NewReader(data), int64(len(data)), reqTimeout)
}

func digestOf(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// head sends HEAD url and returns the status and Content-Length.
func head(ctx context.Context, url string) (int, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, reqTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := ctl.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("HEAD %s: %w", url, err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.ContentLength, nil
}

// blobURL is where base serves blob dgst of repo; ns names the upstream.
func blobURL(base, repo, dgst, ns string) string {
	u := base + "/v2/" + repo + "/blobs/" + dgst
	if ns != "" {
		u += "?ns=" + ns
	}
	return u
}
