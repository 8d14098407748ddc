package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/internal/testlog"
	"github.com/prometheus/client_golang/prometheus"
)

func metaFor(i int) Meta {
	return Meta{
		PeerID:   fmt.Sprintf("12D3KooWpeer%d", i),
		P2PAddrs: []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i)},
		DataPort: 6000 + i,
		Registry: fmt.Sprintf("127.0.0.1:%d", 5000+i),
		Version:  "test",
		Labels:   map[string]string{"line": fmt.Sprint(i)},
	}
}

func TestFiveNodesJoinViaOneSeedAndShareMeta(t *testing.T) {
	reg := prometheus.NewRegistry()
	seed := start(t, Options{Meta: metaFor(0), Registerer: reg}) // default name
	if host, _ := os.Hostname(); !strings.HasPrefix(seed.LocalName(), host+"-") {
		t.Errorf("default name %q does not start with the hostname", seed.LocalName())
	}
	if strings.HasSuffix(seed.Addr(), ":0") || !strings.HasPrefix(seed.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr %q: want the real bound port", seed.Addr())
	}
	fleet := []*Fleet{seed}
	var rec changes
	for i := 1; i < 5; i++ {
		opts := Options{Name: fmt.Sprintf("node%d", i), Meta: metaFor(i), Join: []string{seed.Addr()}}
		if i == 4 {
			opts.OnChange = rec.add
		}
		fleet = append(fleet, start(t, opts))
	}
	for _, f := range fleet {
		eventually(t, 10*time.Second, func() error { return seesAlive(f, fleet...) })
	}
	if got := gauge(t, reg, StateAlive); got != 5 {
		t.Fatalf("imgmesh_fleet_members{state=alive} = %v, want 5", got)
	}
	// node4 learned every other member's libp2p addresses through OnChange.
	for _, f := range fleet[:4] {
		want := f.Meta()
		eventually(t, 5*time.Second, func() error {
			if !rec.find(func(m Member) bool { return m.Name == f.LocalName() && m.Meta.Equal(want) }) {
				return fmt.Errorf("no OnChange for %s", f.LocalName())
			}
			return nil
		})
	}
	if rec.find(func(m Member) bool { return m.Self }) {
		t.Fatal("OnChange reported this node itself")
	}

	// A meta update reaches everyone, and OnChange.
	upd := metaFor(2)
	upd.P2PAddrs = append(upd.P2PAddrs, "/ip4/127.0.0.1/udp/4102/quic-v1")
	upd.Labels["zone"] = "paint"
	if err := fleet[2].UpdateMeta(upd); err != nil {
		t.Fatal(err)
	}
	if !fleet[2].Meta().Equal(upd) {
		t.Fatalf("Meta() = %+v after update", fleet[2].Meta())
	}
	for _, f := range fleet {
		eventually(t, 5*time.Second, func() error { return seesAlive(f, fleet...) })
	}
	eventually(t, 5*time.Second, func() error {
		if !rec.find(func(m Member) bool { return m.Name == "node2" && m.Meta.Labels["zone"] == "paint" }) {
			return errors.New("no OnChange with node2's new meta")
		}
		return nil
	})
}

func TestLeftMemberShowsLeftThenIsDropped(t *testing.T) {
	timing := fast()
	timing.Retention = 1500 * time.Millisecond
	reg := prometheus.NewRegistry()
	var rec changes
	a := start(t, Options{Name: "a", Timing: timing, Registerer: reg, OnChange: rec.add})
	b := start(t, Options{Name: "b", Timing: timing, Join: []string{a.Addr()}})
	c := start(t, Options{Name: "c", Timing: timing, Join: []string{a.Addr()}})
	for _, f := range []*Fleet{a, b, c} {
		eventually(t, 10*time.Second, func() error { return seesAlive(f, a, b, c) })
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join([]string{a.Addr()}); err == nil {
		t.Fatal("Join after Close succeeded")
	}
	for _, f := range []*Fleet{a, b} {
		eventually(t, 5*time.Second, func() error {
			switch s := view(f)["c"].State; s {
			case StateLeft:
				return nil
			case StateDead:
				t.Fatalf("%s sees c, which left, as dead", f.LocalName())
			default:
				return fmt.Errorf("%s sees c %q, want left", f.LocalName(), s)
			}
			return nil
		})
	}
	if got := gauge(t, reg, StateLeft); got != 1 {
		t.Fatalf("imgmesh_fleet_members{state=left} = %v", got)
	}
	if !rec.find(func(m Member) bool { return m.Name == "c" && m.State == StateLeft }) {
		// OnChange runs on its own goroutine: give it its deadline.
		eventually(t, 2*time.Second, func() error {
			if !rec.find(func(m Member) bool { return m.Name == "c" && m.State == StateLeft }) {
				return errors.New("no OnChange for c leaving")
			}
			return nil
		})
	}
	eventually(t, 5*time.Second, func() error {
		if m, ok := view(a)["c"]; ok {
			return fmt.Errorf("c still listed (%s) after the retention", m.State)
		}
		return nil
	})
	if err := seesAlive(a, a, b); err != nil {
		t.Fatal(err)
	}
	if got := gauge(t, reg, StateLeft); got != 0 {
		t.Fatalf("imgmesh_fleet_members{state=left} = %v after the retention", got)
	}
}

func TestKilledMemberTurnsDead(t *testing.T) {
	a := start(t, Options{Name: "a"})
	b := start(t, Options{Name: "b", Join: []string{a.Addr()}})
	c := start(t, Options{Name: "c", Join: []string{a.Addr()}})
	for _, f := range []*Fleet{a, b, c} {
		eventually(t, 10*time.Second, func() error { return seesAlive(f, a, b, c) })
	}
	if err := c.shutdown(false); err != nil { // a crash: no leave message
		t.Fatal(err)
	}
	for _, f := range []*Fleet{a, b} {
		eventually(t, 10*time.Second, func() error {
			switch s := view(f)["c"].State; s {
			case StateDead:
				return nil
			case StateLeft:
				t.Fatalf("%s sees the crashed c as left", f.LocalName())
			default:
				return fmt.Errorf("%s sees c %q", f.LocalName(), s)
			}
			return nil
		})
	}
	for _, f := range []*Fleet{a, b} {
		v := view(f)
		if v["a"].State != StateAlive || v["b"].State != StateAlive {
			t.Fatalf("%s: survivors not alive: %v", f.LocalName(), names(v))
		}
	}
}

func TestFleetKeyKeepsStrangersOut(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	other := bytes.Repeat([]byte{8}, 32)
	a := start(t, Options{Name: "a", Key: key})
	b := start(t, Options{Name: "b", Key: key, Join: []string{a.Addr()}})
	eventually(t, 10*time.Second, func() error { return seesAlive(a, a, b) })

	// Strangers keep retrying in the background the whole test long, and
	// say once why they cannot join.
	var wrongLog, openLog testlog.Buffer
	wrong := start(t, Options{Name: "wrong-key", Key: other, Join: []string{a.Addr(), b.Addr()}, Logger: slog.New(slog.NewTextHandler(&wrongLog, nil))})
	open := start(t, Options{Name: "no-key", Join: []string{a.Addr(), b.Addr()}, Logger: slog.New(slog.NewTextHandler(&openLog, nil))})
	for _, l := range []*testlog.Buffer{&wrongLog, &openLog} {
		eventually(t, 10*time.Second, func() error {
			if !strings.Contains(l.String(), "level=ERROR") || !strings.Contains(l.String(), "another fleet key") {
				return fmt.Errorf("no error naming the fleet key in the log:\n%s", l.String())
			}
			return nil
		})
	}
	for _, s := range []*Fleet{wrong, open} {
		if n, err := s.Join([]string{a.Addr()}); err == nil {
			t.Fatalf("%s joined the keyed fleet (%d answered)", s.LocalName(), n)
		}
		if n, err := a.Join([]string{s.Addr()}); err == nil {
			t.Fatalf("keyed a joined %s (%d answered)", s.LocalName(), n)
		}
	}
	// A third keyed node joining through b and being seen by all is a barrier:
	// by then gossip has had many rounds to leak the strangers in.
	c := start(t, Options{Name: "c", Key: key, Join: []string{b.Addr()}})
	for _, f := range []*Fleet{a, b, c} {
		eventually(t, 10*time.Second, func() error { return seesAlive(f, a, b, c) })
	}
	for _, s := range []*Fleet{wrong, open} {
		if err := seesAlive(s, s); err != nil {
			t.Fatalf("stranger: %v", err)
		}
	}
}

func TestJoinRetriesUntilSeedAppears(t *testing.T) {
	port := freePort(t)
	seedAddr := fmt.Sprintf("127.0.0.1:%d", port)
	b := start(t, Options{Name: "b", Join: []string{seedAddr}})
	if err := seesAlive(b, b); err != nil {
		t.Fatal(err)
	}
	a := start(t, Options{Name: "a", BindAddr: seedAddr})
	for _, f := range []*Fleet{a, b} {
		eventually(t, 10*time.Second, func() error { return seesAlive(f, a, b) })
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{name: "bind without port", opts: Options{BindAddr: "127.0.0.1"}, want: "bind address"},
		{name: "bind bad port", opts: Options{BindAddr: "127.0.0.1:http"}, want: "port"},
		{name: "advertise hostname", opts: Options{AdvertiseAddr: "nodes.example"}, want: "advertise"},
		{name: "short key", opts: Options{Key: make([]byte, 16)}, want: "32"},
		{name: "meta too large", opts: Options{Meta: Meta{Labels: map[string]string{"x": strings.Repeat("y", 600)}}}, want: "too large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.opts.BindAddr == "" {
				tc.opts.BindAddr = "127.0.0.1:0"
			}
			f, err := New(tc.opts)
			if err == nil {
				f.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestSecondCloseWaitsForTheFirst: Close called twice at once returns, both
// times, only once the fleet has stopped (its port is free again).
func TestSecondCloseWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	a := start(t, Options{Name: "a"})
	b := start(t, Options{Name: "b", Join: []string{a.Addr()}})
	eventually(t, 10*time.Second, func() error { return seesAlive(b, a, b) })
	addr := b.Addr()
	errs := make(chan error, 2)
	for range 2 {
		go func() { errs <- b.Close() }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("a Close returned while the fleet still held %s: %v", addr, err)
		}
		ln.Close()
	}
}
