package fleet

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// Timeouts of the fleet's start and of small control requests.
const (
	readyTimeout = 60 * time.Second // a node starting on a busy machine
	fleetTimeout = 60 * time.Second // the fleet converging (gossip, libp2p, DHT)
	reqTimeout   = 5 * time.Second
)

// upstreamName is the registry name the nodes give the benchmark's upstream.
const upstreamName = "fleet.bench"

// node is one `imgmesh serve` process.
type node struct {
	name  string
	p     *benchkit.Proc
	addrs nodeAddrs
	c     *http.Client // its device's client
}

// base is the URL of the node's registry API, as its device reaches it.
func (n *node) base() string { return "http://" + n.addrs.api }

// nodeSpec is what every node of a scenario shares.
type nodeSpec struct {
	bin      string
	upstream string   // upstream URL
	extra    []string // flags after the benchmark's own
	dir      string   // data dirs and logs: DIR/nodeI, DIR/nodeI.log
}

// startNodes starts one node per device, all but the first joining the
// first's gossip, and waits until each is ready and sees the whole fleet.
func startNodes(ctx context.Context, ps *benchkit.Procs, nw network, n int, spec nodeSpec) ([]*node, error) {
	if err := os.MkdirAll(spec.dir, 0o755); err != nil {
		return nil, err
	}
	var nodes []*node
	for i := range n {
		a, err := nw.node(i)
		if err != nil {
			return nil, err
		}
		name := fmt.Sprintf("node%d", i+1)
		argv := append(append(append([]string{}, a.prefix...), envScrub()...), spec.bin, "serve",
			"--data-dir", filepath.Join(spec.dir, name), "--listen", a.api,
			"--log-format", "json", "--log-level", "warn", "--node-name", name,
			"--mdns=false", "--p2p-listen", a.p2p, "--gossip-listen", a.gossip, "--data-listen", a.data,
			"--upstream", upstreamName+"="+spec.upstream, "--restrict-upstreams")
		if i > 0 {
			argv = append(argv, "--join", nodes[0].addrs.gossip)
		}
		argv = append(argv, spec.extra...)
		p, err := ps.Start(name, filepath.Join(spec.dir, name+".log"), argv...)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, &node{name: name, p: p, addrs: a, c: nw.client(i)})
	}
	for _, nd := range nodes {
		err := benchkit.Poll(ctx, nd.p, readyTimeout, "ready", func(ctx context.Context) (bool, error) {
			resp, err := request(ctx, nd.c, nd.base()+"/readyz")
			if err != nil {
				return false, nil
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, nil
		})
		if err != nil {
			return nil, err
		}
	}
	for _, nd := range nodes {
		err := benchkit.Poll(ctx, nd.p, fleetTimeout, fmt.Sprintf("in a fleet of %d", n), func(ctx context.Context) (bool, error) {
			return nd.seesFleet(ctx, n), nil
		})
		if err != nil {
			return nil, err
		}
	}
	return nodes, nil
}

// envScrub keeps the user's IMGMESH_* variables away from the nodes: the
// benchmark's flags alone configure them.
func envScrub() []string {
	var args []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "IMGMESH_") {
			args = append(args, "-u", k)
		}
	}
	if len(args) == 0 {
		return nil
	}
	return append([]string{"env"}, args...)
}

// seesFleet reports whether the node counts want live members and has
// libp2p connections to the others (content routing works).
func (n *node) seesFleet(ctx context.Context, want int) bool {
	st, err := n.status(ctx)
	if err != nil || st.FleetSize < want {
		return false
	}
	resp, err := request(ctx, n.c, n.base()+"/metrics")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "imgmesh_peers "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return err == nil && f >= float64(want-1)
		}
	}
	return false
}

// status is the node's /api/v1/status.
func (n *node) status(ctx context.Context) (admin.Status, error) {
	var st admin.Status
	resp, err := request(ctx, n.c, n.base()+admin.StatusPath)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s status: %s", n.name, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("%s status: %w", n.name, err)
	}
	return st, nil
}

// request GETs url, bounded by reqTimeout; the caller closes the body.
func request(ctx context.Context, c *http.Client, url string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, reqTimeout)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// rateFlags are the per-node caps of the lead's rate feature, when the
// binary has them: --max-upload-rate and --max-download-rate at rate
// bytes/s. Nil when `serve --help` does not list them.
func rateFlags(ctx context.Context, bin string, rate float64) []string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, "serve", "--help").CombinedOutput()
	help := string(out)
	if !strings.Contains(help, "--max-upload-rate") || !strings.Contains(help, "--max-download-rate") {
		return nil
	}
	r := strconv.FormatInt(int64(rate), 10)
	return []string{"--max-upload-rate", r, "--max-download-rate", r}
}
