// Package routertest is a conformance suite for p2p.Router implementations.
package routertest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/p2p"
)

// Option changes what the suite asserts.
type Option func(*config)

type config struct{ globalWithdraw bool }

// WithdrawIsGlobal asserts that after Withdraw no router of the fleet finds
// the withdrawing one any more. Only for implementations that promise it
// (MemoryRouter); a DHT lets remote records live until they expire.
func WithdrawIsGlobal() Option { return func(c *config) { c.globalWithdraw = true } }

// settle bounds how long an announcement may take to be visible elsewhere.
const settle = 5 * time.Second

// Run runs the suite. newFleet returns n connected routers of one fleet,
// each with its own ID, and arranges for their cleanup with t.Cleanup.
func Run(t *testing.T, newFleet func(t *testing.T, n int) []p2p.Router, opts ...Option) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	t.Run("AdvertiseThenLookupFromAnotherNode", func(t *testing.T) {
		rs := newFleet(t, 3)
		k := Key()
		advertise(t, rs[0], k)
		hs := waitFor(t, rs[1], k, 1, []string{rs[0].ID()})
		if len(hs) != 1 || hs[0].ID != rs[0].ID() {
			t.Fatalf("lookup from %s: got %+v, want exactly %s", rs[1].ID(), hs, rs[0].ID())
		}
		waitFor(t, rs[2], k, 1, []string{rs[0].ID()})
	})
	t.Run("PeerCountSeesTheFleet", func(t *testing.T) {
		if n := newFleet(t, 1)[0].PeerCount(); n != 0 {
			t.Fatalf("a lone router counts %d peers, want 0", n)
		}
		rs := newFleet(t, 3)
		deadline := time.Now().Add(10 * time.Second)
		for rs[0].PeerCount() < 2 {
			if time.Now().After(deadline) {
				t.Fatalf("router of a fleet of 3 counts %d peers, want 2", rs[0].PeerCount())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	t.Run("LookupStopsAtCount", func(t *testing.T) {
		rs := newFleet(t, 4)
		k := Key()
		advertise(t, rs[0], k)
		advertise(t, rs[1], k)
		advertise(t, rs[2], k)
		all := []string{rs[0].ID(), rs[1].ID(), rs[2].ID()}
		waitFor(t, rs[3], k, 3, all)
		hs := lookup(t, rs[3], k, 2)
		if len(hs) != 2 {
			t.Fatalf("lookup with count 2 gave %d holders: %+v", len(hs), hs)
		}
		for _, h := range hs {
			if !slices.Contains(all, h.ID) {
				t.Fatalf("holder %s never advertised %s", h.ID, k)
			}
		}
	})
	t.Run("LookupNeverReturnsSelf", func(t *testing.T) {
		rs := newFleet(t, 3)
		k := Key()
		advertise(t, rs[0], k)
		advertise(t, rs[1], k)
		hs := waitFor(t, rs[0], k, 5, []string{rs[1].ID()})
		for _, h := range hs {
			if h.ID == rs[0].ID() {
				t.Fatalf("lookup on %s returned itself: %+v", rs[0].ID(), hs)
			}
		}
		lonely := Key()
		advertise(t, rs[2], lonely)
		if hs := lookup(t, rs[2], lonely, 5); len(hs) != 0 {
			t.Fatalf("only %s holds the key, yet its own lookup gave %+v", rs[2].ID(), hs)
		}
	})
	t.Run("UnknownKeyIsEmptyNotError", func(t *testing.T) {
		rs := newFleet(t, 3)
		advertise(t, rs[0], Key()) // some other content exists
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		start := time.Now()
		hs, err := rs[1].Lookup(ctx, Key(), 3)
		if err != nil || len(hs) != 0 {
			t.Fatalf("unknown key: got %+v, %v; want empty, nil", hs, err)
		}
		if d := time.Since(start); d > 2*time.Second+500*time.Millisecond {
			t.Fatalf("lookup of an unknown key overran its 2s budget: %v", d)
		}
	})
	t.Run("LookupBoundedByDeadline", func(t *testing.T) {
		rs := newFleet(t, 2)
		const budget = 100 * time.Millisecond
		for range 5 {
			ctx, cancel := context.WithTimeout(t.Context(), budget)
			start := time.Now()
			_, err := rs[0].Lookup(ctx, Key(), 1)
			d := time.Since(start)
			cancel()
			if err != nil {
				t.Fatalf("lookup: %v", err)
			}
			if d > budget+250*time.Millisecond {
				t.Fatalf("lookup took %v with a %v budget", d, budget)
			}
		}
	})
	t.Run("MalformedKeysRejected", func(t *testing.T) {
		rs := newFleet(t, 1)
		for _, k := range []string{"", "sha256:abc", "md5:" + hex.EncodeToString(make([]byte, 16)), "tag:nginx"} {
			if err := rs[0].Advertise(t.Context(), k); !errors.Is(err, p2p.ErrInvalidKey) {
				t.Errorf("Advertise(%q) = %v, want ErrInvalidKey", k, err)
			}
			if _, err := rs[0].Lookup(t.Context(), k, 1); !errors.Is(err, p2p.ErrInvalidKey) {
				t.Errorf("Lookup(%q) = %v, want ErrInvalidKey", k, err)
			}
		}
	})
	t.Run("Withdraw", func(t *testing.T) {
		rs := newFleet(t, 3)
		gone, kept := Key(), Key()
		advertise(t, rs[0], gone, kept)
		advertise(t, rs[1], gone)
		waitFor(t, rs[2], gone, 2, []string{rs[0].ID(), rs[1].ID()})
		if err := rs[0].Withdraw(t.Context(), gone); err != nil {
			t.Fatalf("withdraw: %v", err)
		}
		if err := rs[0].Withdraw(t.Context(), Key()); err != nil {
			t.Fatalf("withdrawing a key never advertised: %v", err)
		}
		// The other holder and the other key are unaffected.
		waitFor(t, rs[2], gone, 5, []string{rs[1].ID()})
		waitFor(t, rs[2], kept, 5, []string{rs[0].ID()})
		// The withdrawing node's own lookups see the remaining holder only.
		if hs := lookup(t, rs[0], gone, 5); len(hs) != 1 || hs[0].ID != rs[1].ID() {
			t.Fatalf("lookup on the withdrawing node: got %+v, want only %s", hs, rs[1].ID())
		}
		if !c.globalWithdraw {
			return
		}
		for _, r := range rs[1:] {
			for _, h := range lookup(t, r, gone, 5) {
				if h.ID == rs[0].ID() {
					t.Fatalf("%s still finds withdrawn holder %s", r.ID(), h.ID)
				}
			}
		}
	})
}

// Key returns a fresh random sha256 digest key.
func Key() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func advertise(t *testing.T, r p2p.Router, keys ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), settle)
	defer cancel()
	if err := r.Advertise(ctx, keys...); err != nil {
		t.Fatalf("advertise on %s: %v", r.ID(), err)
	}
}

func lookup(t *testing.T, r p2p.Router, key string, count int) []p2p.Holder {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	hs, err := r.Lookup(ctx, key, count)
	if err != nil {
		t.Fatalf("lookup on %s: %v", r.ID(), err)
	}
	if len(hs) > count {
		t.Fatalf("lookup with count %d gave %d holders", count, len(hs))
	}
	return hs
}

// waitFor polls r until a lookup of key with count finds every ID in want,
// and fails the test at the settle deadline.
func waitFor(t *testing.T, r p2p.Router, key string, count int, want []string) []p2p.Holder {
	t.Helper()
	deadline := time.Now().Add(settle)
	for {
		hs := lookup(t, r, key, count)
		ids := make([]string, len(hs))
		for i, h := range hs {
			ids[i] = h.ID
		}
		missing := slices.ContainsFunc(want, func(id string) bool { return !slices.Contains(ids, id) })
		if !missing {
			return hs
		}
		if time.Now().After(deadline) {
			t.Fatalf("lookup of %s on %s: got %v, want %v", key, r.ID(), ids, want)
		}
		time.Sleep(20 * time.Millisecond) // poll interval, not a wait for a fixed event
	}
}
