package fleet

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// network is where the fleet runs: how each node is started and listens,
// how a device's connections are made, where the upstream listens.
type network interface {
	// listenUpstream opens the upstream's listener and says its URL as
	// the nodes and devices reach it.
	listenUpstream() (ln net.Listener, base string, err error)
	// client is device i's HTTP client: its connections start where
	// device i is, so 127.0.0.1 is device i's own node.
	client(i int) *http.Client
	// node says how node i starts (command prefix) and where it listens;
	// each call may pick new ports.
	node(i int) (nodeAddrs, error)
	// describe says in a line how the links are shaped.
	describe() string
	// close removes what setup made, unless keep; it says what it kept.
	close(keep bool) (kept string, err error)
}

// nodeAddrs is how one node is started and reached.
type nodeAddrs struct {
	prefix []string // before the binary, e.g. ip netns exec NS
	api    string   // HOST:PORT of the registry API, as its device dials it
	gossip string   // HOST:PORT of gossip, as the other nodes dial it
	p2p    string   // libp2p listen multiaddr
	data   string   // HOST:PORT of the data plane
}

// newTransport is a device's HTTP transport: no proxy, no compression,
// keep-alive, connections made by dial.
func newTransport(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Transport {
	return &http.Transport{
		Proxy:               nil,
		DialContext:         dial,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 2 * PullConcurrency,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}
}

// loopback runs every node on 127.0.0.1 with its own ports; links are not
// shaped (the upstream limits itself in process).
type loopback struct {
	c *http.Client
}

func newLoopback() *loopback {
	return &loopback{c: &http.Client{Transport: newTransport((&net.Dialer{Timeout: 5 * time.Second}).DialContext)}}
}

func (l *loopback) listenUpstream() (net.Listener, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", fmt.Errorf("upstream listener: %w", err)
	}
	return ln, "http://" + ln.Addr().String(), nil
}

func (l *loopback) client(int) *http.Client { return l.c }

func (l *loopback) node(int) (nodeAddrs, error) {
	var ports [2]int
	for i := range ports {
		p, err := benchkit.FreePort()
		if err != nil {
			return nodeAddrs{}, err
		}
		ports[i] = p
	}
	return nodeAddrs{
		api:    fmt.Sprintf("127.0.0.1:%d", ports[0]),
		gossip: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		p2p:    "/ip4/127.0.0.1/tcp/0",
		data:   "127.0.0.1:0",
	}, nil
}

func (l *loopback) describe() string {
	return "SIMULATION (loopback): all nodes on 127.0.0.1; the upstream is rate-limited in process"
}

func (l *loopback) close(bool) (string, error) {
	l.c.CloseIdleConnections()
	return "", nil
}

// inNetns runs fn on an OS thread that entered network namespace ns, then
// goes back. Sockets fn opens stay in ns. A thread that cannot go back is
// ended with its goroutine rather than reused.
func inNetns(ns string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("own network namespace: %w", err)
			return
		}
		defer home.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("network namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", ns, err)
			return
		}
		fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- nil
	}()
	return <-errc
}

// netnsDialer dials from network namespace ns.
func netnsDialer(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		var derr error
		if err := inNetns(ns, func() {
			d := net.Dialer{Timeout: 5 * time.Second}
			c, derr = d.DialContext(ctx, network, addr)
		}); err != nil {
			return nil, err
		}
		return c, derr
	}
}
