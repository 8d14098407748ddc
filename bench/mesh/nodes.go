package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/imgmesh/imgmesh/admin"
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
	p      *proc
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
func launch(ps *procs, o nodeOpts) (*node, error) {
	port, err := freePort()
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
	p, err := ps.start(o.name, o.dir+".log", args...)
	if err != nil {
		return nil, err
	}
	return &node{name: o.name, p: p, base: fmt.Sprintf("http://127.0.0.1:%d", port)}, nil
}

// ready waits until the node answers and learns its gossip address.
func (n *node) ready(ctx context.Context) error {
	if err := waitReady(ctx, n.p, n.base+"/v2/", readyTimeout); err != nil {
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
func startNodes(ctx context.Context, ps *procs, opts []nodeOpts) ([]*node, error) {
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
		err := poll(ctx, n.p, fleetTimeout, fmt.Sprintf("in a fleet of %d", want), func(ctx context.Context) (bool, error) {
			return n.fleetSeen(ctx, want)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// ctl is the client of small control requests: loopback, no proxy.
var ctl = newClient()

// newClient is an HTTP client for loopback: no proxy, no compression,
// keep-alive. Every request it sends carries its own deadline.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}}
}

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

// errShort marks a body that ended before the expected size.
var errShort = errors.New("short body")

// get fetches url into a 1 MiB buffer, hashing it when verify is set, and
// returns the time from sending the request to the last byte. The body must
// be exactly size bytes, and with verify hash to dgst.
func get(ctx context.Context, client *http.Client, url string, size int64, dgst string, verify bool, timeout time.Duration) (time.Duration, error) {
	t, err := getSplit(ctx, client, url, size, dgst, verify, timeout)
	return t.all, err
}

// timing is one GET: to the last byte, and to the last tailBytes (a node
// streaming a download holds the last byte back until the blob verified
// and is stored; buffers on the way may hold a few KiB more).
type timing struct{ all, beforeTail time.Duration }

// tailBytes is the end of a body whose arrival getSplit times apart.
const tailBytes = 1 << 20

// getSplit is get that also times the arrival of all but the last
// tailBytes (all but the last byte of a smaller body).
func getSplit(ctx context.Context, client *http.Client, url string, size int64, dgst string, verify bool, timeout time.Duration) (timing, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return timing{}, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return timing{}, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return timing{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	var t timing
	n, err := readAll(resp.Body, h, tailMark(size), func() { t.beforeTail = time.Since(start) })
	if err != nil {
		return timing{}, fmt.Errorf("GET %s after %d bytes: %w", url, n, err)
	}
	t.all = time.Since(start)
	if n != size {
		return timing{}, fmt.Errorf("GET %s: %w: %d bytes, want %d", url, errShort, n, size)
	}
	if h != nil {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
			return timing{}, fmt.Errorf("GET %s: body hashes to %s, want %s", url, got, dgst)
		}
	}
	return t, nil
}

// tailMark is how many bytes of a size-byte body come before its tail.
func tailMark(size int64) int64 {
	if size > 2*tailBytes {
		return size - tailBytes
	}
	return max(size-1, 0)
}

// readAll reads r to EOF through a 1 MiB buffer (io.Discard's ReadFrom
// would read in 8 KiB steps), writing to h when not nil, and counts bytes.
// at, when not nil, is called once when mark bytes have arrived.
func readAll(r io.Reader, h hash.Hash, mark int64, at func()) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if h != nil {
			h.Write(buf[:n])
		}
		if at != nil && total >= mark {
			at()
			at = nil
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// transferTimeout bounds one transfer of size bytes: 30 s plus 20 MB/s.
func transferTimeout(size int64) time.Duration {
	return 30*time.Second + time.Duration(float64(size)/20e6*float64(time.Second))
}

// blobURL is where base serves blob dgst of repo; ns names the upstream.
func blobURL(base, repo, dgst, ns string) string {
	u := base + "/v2/" + repo + "/blobs/" + dgst
	if ns != "" {
		u += "?ns=" + ns
	}
	return u
}
