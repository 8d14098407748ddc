package p2p_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/p2p/routertest"
)

// loopback is the only listen address of test hosts: TCP on 127.0.0.1.
var loopback = []string{"/ip4/127.0.0.1/tcp/0"}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("P2P_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newHost starts a host on loopback with mDNS off and closes it at cleanup.
func newHost(t testing.TB, o p2p.Options) *p2p.Host {
	t.Helper()
	if o.ListenAddrs == nil {
		o.ListenAddrs = loopback
	}
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	o.MDNS = false
	h, err := p2p.New(context.Background(), o)
	if err != nil {
		t.Fatalf("new host: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return h
}

// newFleet starts n hosts, connects every pair and waits until each routing
// table holds all the others.
func newFleet(t testing.TB, n int) []*p2p.Host {
	t.Helper()
	hs := make([]*p2p.Host, n)
	for i := range hs {
		hs[i] = newHost(t, p2p.Options{Meta: p2p.Meta{DataPort: 5000 + i}})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range hs {
		var addrs []string
		for _, o := range hs[:i] {
			addrs = append(addrs, o.Addrs()...)
		}
		if len(addrs) == 0 {
			continue
		}
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs[i] = hs[i].Connect(ctx, addrs)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
	}
	waitUntil(t, 10*time.Second, "routing tables to fill", func() bool {
		for _, h := range hs {
			if p2p.RoutingTableSize(h) < n-1 {
				return false
			}
		}
		return true
	})
	return hs
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestHostRouterConformance(t *testing.T) {
	routertest.Run(t, func(t *testing.T, n int) []p2p.Router {
		var rs []p2p.Router
		for _, h := range newFleet(t, n) {
			rs = append(rs, h)
		}
		return rs
	})
}

func TestIdentityPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "identity.key")
	a := newHost(t, p2p.Options{IdentityPath: path})
	id := a.ID()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, want 0600", st.Mode().Perm())
	}
	b := newHost(t, p2p.Options{IdentityPath: path})
	if b.ID() != id {
		t.Fatalf("peer ID changed across restart: %s then %s", id, b.ID())
	}
	if c := newHost(t, p2p.Options{IdentityPath: filepath.Join(t.TempDir(), "other.key")}); c.ID() == id {
		t.Fatal("two identity files gave the same peer ID")
	}
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if h, err := p2p.New(context.Background(), p2p.Options{IdentityPath: path, ListenAddrs: loopback, Logger: testLogger(t)}); err == nil {
		h.Close()
		t.Fatal("started with a corrupt identity file")
	}
}

func TestMetaExchangeGivesDataURL(t *testing.T) {
	var mu sync.Mutex
	var seen []p2p.PeerInfo
	a := newHost(t, p2p.Options{Meta: p2p.Meta{DataPort: 5123, GossipAddr: ":7946", Version: "v-test"}})
	b := newHost(t, p2p.Options{OnPeer: func(pi p2p.PeerInfo) {
		mu.Lock()
		seen = append(seen, pi)
		mu.Unlock()
	}})
	if err := b.Connect(t.Context(), a.Addrs()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "OnPeer", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) > 0
	})
	mu.Lock()
	pi := seen[0]
	mu.Unlock()
	if pi.ID != a.ID() || !pi.HasMeta || pi.Meta.DataPort != 5123 || pi.Meta.Version != "v-test" {
		t.Fatalf("OnPeer got %+v", pi)
	}
	if got := pi.DataURL(); got != "http://127.0.0.1:5123" {
		t.Fatalf("DataURL %q, want http://127.0.0.1:5123", got)
	}
	if got := pi.GossipJoinAddr(); got != "127.0.0.1:7946" {
		t.Fatalf("GossipJoinAddr %q, want 127.0.0.1:7946", got)
	}
	peers := b.Peers()
	if len(peers) != 1 || peers[0].ID != a.ID() || !peers[0].Connected || peers[0].Meta.GossipAddr != ":7946" {
		t.Fatalf("Peers() = %+v", peers)
	}
	// A holder found by a lookup carries the data URL.
	k := routertest.Key()
	if err := a.Advertise(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	// ADD_PROVIDER has no reply, so the record lands a moment after
	// Advertise returns.
	var hs []p2p.Holder
	waitUntil(t, 5*time.Second, "lookup to find the holder", func() bool {
		var err error
		hs, err = b.Lookup(t.Context(), k, 1)
		if err != nil {
			t.Fatal(err)
		}
		return len(hs) == 1
	})
	if hs[0].DataURL != "http://127.0.0.1:5123" || !slices.ContainsFunc(hs[0].Addrs, func(s string) bool {
		return strings.HasPrefix(s, "/ip4/127.0.0.1/tcp/") && strings.HasSuffix(s, "/p2p/"+a.ID())
	}) {
		t.Fatalf("holder %+v", hs[0])
	}
}

// TestSimultaneousConnect is the discovery race of issue 3: two peers dial
// each other at the same moment. With TCP reuseport both dials can become
// one TCP simultaneous open on which both TLS sides act as clients.
func TestSimultaneousConnect(t *testing.T) {
	for i := range 20 {
		a, b := newHost(t, p2p.Options{}), newHost(t, p2p.Options{})
		start := make(chan struct{})
		errs := make([]error, 2)
		var wg sync.WaitGroup
		for j, pair := range [][2]*p2p.Host{{a, b}, {b, a}} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				<-start
				errs[j] = pair[0].Connect(ctx, pair[1].Addrs())
			})
		}
		close(start)
		wg.Wait()
		for j, err := range errs {
			if err != nil {
				t.Fatalf("round %d, dialer %d: %v", i, j, err)
			}
		}
		// The race needs both dials to leave from the listen ports (TCP
		// reuseport), which makes them one TCP simultaneous open. Catch that
		// every time, not only when the timing hits.
		for _, h := range []*p2p.Host{a, b} {
			for _, local := range p2p.OutboundLocalAddrs(h) {
				if slices.Contains(p2p.ListenAddrs(h), local) {
					t.Fatalf("round %d: outgoing connection from the listen address %s (reuseport is on)", i, local)
				}
			}
		}
		// Both sides can use the connection: each fetches the other's Meta.
		for _, pair := range [][2]*p2p.Host{{a, b}, {b, a}} {
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			_, err := p2p.AskMeta(ctx, pair[0], pair[1].ID())
			cancel()
			if err != nil {
				t.Fatalf("round %d: stream after simultaneous connect: %v", i, err)
			}
		}
		_ = a.Close()
		_ = b.Close()
	}
}

func TestConnectRejectsBadAddrs(t *testing.T) {
	h := newHost(t, p2p.Options{})
	for _, tc := range []struct{ name, addr string }{
		{"garbage", "not-a-multiaddr"},
		{"no peer id", "/ip4/127.0.0.1/tcp/1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := h.Connect(t.Context(), []string{tc.addr}); err == nil {
				t.Fatalf("Connect(%q) succeeded", tc.addr)
			}
		})
	}
	if _, err := p2p.New(t.Context(), p2p.Options{ListenAddrs: loopback, Bootstrap: []string{"/ip4/127.0.0.1/tcp/1"}, Logger: testLogger(t)}); err == nil {
		t.Fatal("New accepted a bootstrap address without /p2p/ID")
	}
}

// A node started before its bootstrap peer keeps dialling until the peer
// is up, then finds what that peer advertises.
func TestBootstrapRetriesUntilPeerIsUp(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	listen := []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}
	path := filepath.Join(t.TempDir(), "identity.key")
	seed := newHost(t, p2p.Options{IdentityPath: path, ListenAddrs: listen})
	addrs := seed.Addrs()
	if err := seed.Close(); err != nil {
		t.Fatal(err)
	}
	late := newHost(t, p2p.Options{Bootstrap: addrs})
	// The port was free a moment ago; under parallel tests another socket
	// may hold it briefly: try again for a while before giving up.
	var restartErr error
	for range 40 {
		h, err := p2p.New(context.Background(), p2p.Options{IdentityPath: path, ListenAddrs: listen, Logger: testLogger(t)})
		if restartErr = err; err == nil {
			seed = h
			t.Cleanup(func() { _ = h.Close() })
			break
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if restartErr != nil {
		t.Fatalf("restart the seed on port %d: %v", port, restartErr)
	}
	k := routertest.Key()
	if err := seed.Advertise(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "the late node to bootstrap and find the key", func() bool {
		hs, err := late.Lookup(t.Context(), k, 1)
		return err == nil && len(hs) == 1 && hs[0].ID == seed.ID()
	})
}
