package discovery

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// clock is a settable time source for the roster.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func node(t *testing.T, name string, port uint16, m Meta, leaving bool) *memberlist.Node {
	t.Helper()
	b, _, err := encodeMeta(m, leaving, MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	return &memberlist.Node{Name: name, Addr: net.IPv4(10, 0, 0, 1), Port: port, Meta: b}
}

func TestRosterStates(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	var notified, gone []string
	r := newRoster("self", time.Minute, func(n string) { notified = append(notified, n) },
		func(m Member) { gone = append(gone, m.Name+"="+string(m.State)) })
	r.now = clk.now
	const per = time.Second // suspectAfter per alive member

	r.NotifyJoin(node(t, "self", 1, metaFor(0), false))
	r.NotifyJoin(node(t, "crash", 2, metaFor(1), false))
	r.NotifyJoin(node(t, "quit", 3, metaFor(2), false))
	r.NotifyUpdate(node(t, "crash", 2, metaFor(1), false)) // same meta: no change
	if want := []string{"crash", "quit"}; !slices.Equal(notified, want) {
		t.Fatalf("notified %v, want %v (never self, never an unchanged update)", notified, want)
	}
	if m := r.list(per)[1]; m.Name != "quit" || m.Addr != "10.0.0.1:3" || !m.Meta.Equal(metaFor(2)) || m.LastSeen != clk.t {
		t.Fatalf("listed %+v", m)
	}

	// Three alive members: silence longer than 3s makes a member suspect; a
	// probe ack clears it. This node itself is never suspect.
	clk.t = clk.t.Add(4 * time.Second)
	r.NotifyPingComplete(node(t, "quit", 3, Meta{}, false), time.Millisecond, nil)
	if got := states(r.list(per)); got != "crash=suspect quit=alive self=alive" {
		t.Fatalf("states %s", got)
	}

	// A member that said it is leaving shows "left" when it goes; one that
	// just vanished shows "dead". Neither is announced as it flags leaving.
	notified = nil
	r.NotifyUpdate(node(t, "quit", 3, metaFor(2), true))
	r.NotifyLeave(node(t, "quit", 3, Meta{}, false))
	r.NotifyLeave(node(t, "crash", 2, Meta{}, false))
	if got := states(r.list(per)); got != "crash=dead quit=left self=alive" {
		t.Fatalf("states %s", got)
	}
	if want := []string{"quit", "crash"}; !slices.Equal(notified, want) {
		t.Fatalf("notified %v, want %v", notified, want)
	}
	if len(gone) != 2 {
		t.Fatalf("leave hook saw %v", gone)
	}

	// Gone members are kept for the retention, then dropped; a dead member
	// that comes back is alive again.
	clk.t = clk.t.Add(30 * time.Second)
	r.NotifyJoin(node(t, "crash", 2, metaFor(1), false))
	clk.t = clk.t.Add(31 * time.Second)
	r.NotifyPingComplete(node(t, "crash", 2, Meta{}, false), time.Millisecond, nil)
	if got := states(r.list(per)); got != "crash=alive self=alive" {
		t.Fatalf("states %s", got)
	}
	if err := r.NotifyAlive(&memberlist.Node{Name: "consul", Meta: []byte(`{"dc":"x"}`)}); err == nil {
		t.Fatal("accepted a member with foreign meta")
	}
}

func states(ms []Member) string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name+"="+string(m.State))
	}
	return strings.Join(out, " ")
}

func TestUpdateMetaRefusesOversizedMeta(t *testing.T) {
	f := start(t, Options{Name: "a", Meta: metaFor(1)})
	err := f.UpdateMeta(Meta{Labels: map[string]string{"x": strings.Repeat("y", 600)}})
	if !errors.Is(err, ErrMetaTooLarge) {
		t.Fatalf("err %v, want ErrMetaTooLarge", err)
	}
	if !f.Meta().Equal(metaFor(1)) || !view(f)["a"].Meta.Equal(metaFor(1)) {
		t.Fatal("a refused update changed the meta")
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.UpdateMeta(metaFor(2)); err == nil {
		t.Fatal("UpdateMeta after Close succeeded")
	}
}
