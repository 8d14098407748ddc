package discovery

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fast is a gossip clock for loopback tests: failures are found in a second
// or two instead of tens of seconds.
func fast() Timing {
	return Timing{
		ProbeInterval:    200 * time.Millisecond,
		ProbeTimeout:     100 * time.Millisecond,
		GossipInterval:   20 * time.Millisecond,
		PushPullInterval: time.Second,
		TCPTimeout:       time.Second,
		SuspicionMult:    3,
		Retention:        time.Minute,
		JoinBackoffMin:   50 * time.Millisecond,
		JoinBackoffMax:   300 * time.Millisecond,
		LeaveTimeout:     time.Second,
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("DISCOVERY_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
}

// start runs a fleet member on 127.0.0.1 (a free port unless opts says) and
// closes it when the test ends.
func start(t *testing.T, opts Options) *Fleet {
	t.Helper()
	if opts.BindAddr == "" {
		opts.BindAddr = "127.0.0.1:0"
	}
	if opts.Timing == (Timing{}) {
		opts.Timing = fast()
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	f, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a wait for an event
	}
}

func view(f *Fleet) map[string]Member {
	out := make(map[string]Member)
	for _, m := range f.Members() {
		out[m.Name] = m
	}
	return out
}

// seesAlive checks that f lists exactly the fleets in want, all alive, with
// the address and meta each of them advertises.
func seesAlive(f *Fleet, want ...*Fleet) error {
	v := view(f)
	if len(v) != len(want) {
		return fmt.Errorf("%s lists %d members, want %d: %v", f.LocalName(), len(v), len(want), names(v))
	}
	for _, w := range want {
		m, ok := v[w.LocalName()]
		switch {
		case !ok:
			return fmt.Errorf("%s does not list %s", f.LocalName(), w.LocalName())
		case m.State != StateAlive:
			return fmt.Errorf("%s sees %s %s", f.LocalName(), w.LocalName(), m.State)
		case m.Addr != w.Addr():
			return fmt.Errorf("%s sees %s at %s, want %s", f.LocalName(), w.LocalName(), m.Addr, w.Addr())
		case !m.Meta.Equal(w.Meta()):
			return fmt.Errorf("%s sees %s meta %+v, want %+v", f.LocalName(), w.LocalName(), m.Meta, w.Meta())
		case m.Self != (w == f):
			return fmt.Errorf("%s: Self=%v for %s", f.LocalName(), m.Self, w.LocalName())
		case m.LastSeen.IsZero():
			return fmt.Errorf("%s: no LastSeen for %s", f.LocalName(), w.LocalName())
		}
	}
	return nil
}

func names(v map[string]Member) []string {
	var out []string
	for n, m := range v {
		out = append(out, n+"="+string(m.State))
	}
	return out
}

// changes records OnChange calls.
type changes struct {
	mu   sync.Mutex
	seen []Member
}

func (c *changes) add(m Member) {
	c.mu.Lock()
	c.seen = append(c.seen, m)
	c.mu.Unlock()
}

func (c *changes) find(match func(Member) bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.seen {
		if match(m) {
			return true
		}
	}
	return false
}

// gauge reads imgmesh_fleet_members{state} from reg.
func gauge(t *testing.T, reg *prometheus.Registry, state State) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "imgmesh_fleet_members" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == string(state) {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no imgmesh_fleet_members{state=%q}", state)
	return 0
}

// freePort returns a port free for both TCP and UDP on 127.0.0.1.
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		u, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := u.LocalAddr().(*net.UDPAddr).Port
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		u.Close()
		if err == nil {
			l.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}
