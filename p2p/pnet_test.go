package p2p_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/fleetkey"
	"github.com/imgmesh/imgmesh/internal/testlog"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/p2p/routertest"
)

func mustKey(t *testing.T) fleetkey.Key {
	t.Helper()
	k, err := fleetkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestFleetKeySameKeyConnects(t *testing.T) {
	k := mustKey(t)
	a := newHost(t, p2p.Options{FleetKey: k, Meta: p2p.Meta{DataPort: 5001}})
	b := newHost(t, p2p.Options{FleetKey: k})
	if err := b.Connect(t.Context(), a.Addrs()); err != nil {
		t.Fatalf("same fleet key: %v", err)
	}
	key := routertest.Key()
	if err := a.Advertise(t.Context(), key); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "lookup over the private network", func() bool {
		hs, err := b.Lookup(t.Context(), key, 1)
		return err == nil && len(hs) == 1 && hs[0].ID == a.ID() && hs[0].DataURL == "http://127.0.0.1:5001"
	})
}

func TestFleetKeyMismatchCannotConnect(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	for _, tc := range []struct {
		name       string
		dial, lstn fleetkey.Key
	}{
		{"different keys", k1, k2},
		{"dialer without key", nil, k1},
		{"listener without key", k1, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newHost(t, p2p.Options{FleetKey: tc.lstn})
			b := newHost(t, p2p.Options{FleetKey: tc.dial})
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			start := time.Now()
			if err := b.Connect(ctx, a.Addrs()); err == nil {
				t.Fatal("connected across fleet keys")
			}
			t.Logf("refused after %v", time.Since(start))
			for _, h := range []*p2p.Host{a, b} {
				for _, pi := range h.Peers() {
					if pi.Connected {
						t.Fatalf("%s lists %s as connected", h.ID(), pi.ID)
					}
				}
			}
		})
	}
}

func TestFleetKeyDropsQUIC(t *testing.T) {
	both := []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"}
	var logs testlog.Buffer
	h := newHost(t, p2p.Options{ListenAddrs: both, FleetKey: mustKey(t), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	for _, a := range h.Addrs() {
		if strings.Contains(a, "/udp/") {
			t.Fatalf("QUIC address %s with a fleet key", a)
		}
	}
	if !strings.Contains(logs.String(), "QUIC disabled") {
		t.Fatalf("no log line says QUIC was dropped; logs:\n%s", logs.String())
	}
	if _, err := p2p.New(t.Context(), p2p.Options{ListenAddrs: both[1:], FleetKey: mustKey(t), Logger: testLogger(t)}); err == nil {
		t.Fatal("started with a fleet key and only QUIC addresses")
	}

	open := newHost(t, p2p.Options{ListenAddrs: both})
	if !strings.Contains(strings.Join(open.Addrs(), " "), "/quic-v1/") {
		t.Fatalf("no QUIC address without a fleet key: %v", open.Addrs())
	}
	quicOnly := newHost(t, p2p.Options{ListenAddrs: both[1:]})
	if err := quicOnly.Connect(t.Context(), open.Addrs()); err != nil {
		t.Fatalf("QUIC connect: %v", err)
	}
}
