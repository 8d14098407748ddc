package p2p_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/p2p/routertest"
)

func finds(t *testing.T, r p2p.Router, key, holder string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	hs, err := r.Lookup(ctx, key, 5)
	if err != nil {
		t.Fatalf("lookup: %v", err)
	}
	for _, h := range hs {
		if h.ID == holder {
			return true
		}
	}
	return false
}

// A peer that joins after Withdraw is told the keys still advertised and
// never the withdrawn ones.
func TestWithdrawnKeysAreNotToldToJoiningPeers(t *testing.T) {
	hs := newFleet(t, 2)
	a, b := hs[0], hs[1]
	kept, gone := routertest.Key(), routertest.Key()
	if err := a.Advertise(t.Context(), kept, gone); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "b to find both keys", func() bool {
		return finds(t, b, kept, a.ID()) && finds(t, b, gone, a.ID())
	})
	if err := a.Withdraw(t.Context(), gone); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil { // b held the only record of gone
		t.Fatal(err)
	}
	c := newHost(t, p2p.Options{})
	if err := c.Connect(t.Context(), a.Addrs()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "the joining peer to be told the kept key", func() bool {
		return finds(t, c, kept, a.ID())
	})
	if finds(t, c, gone, a.ID()) {
		t.Fatal("a joining peer learned a withdrawn key")
	}
}

// Records live 3 reprovide intervals on the peers that store them: a key
// stays findable while it is reprovided and disappears after Withdraw.
func TestReprovideAndExpiry(t *testing.T) {
	const every = 150 * time.Millisecond
	a := newHost(t, p2p.Options{ReprovideInterval: every})
	b := newHost(t, p2p.Options{ReprovideInterval: every})
	if err := b.Connect(t.Context(), a.Addrs()); err != nil {
		t.Fatal(err)
	}
	k := routertest.Key()
	if err := a.Advertise(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "b to find a", func() bool { return finds(t, b, k, a.ID()) })
	// Watch for 3 record lifetimes: reprovides keep it alive.
	for end := time.Now().Add(9 * every); time.Now().Before(end); time.Sleep(every / 3) {
		if !finds(t, b, k, a.ID()) {
			t.Fatal("record expired although a reprovides it")
		}
	}
	if err := a.Withdraw(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitUntil(t, 10*every, "the withdrawn record to expire on b", func() bool { return !finds(t, b, k, a.ID()) })
	t.Logf("record gone from b %v after Withdraw (lifetime %v)", time.Since(start).Round(time.Millisecond), 3*every)
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := newHost(t, p2p.Options{Registerer: reg})
	b := newHost(t, p2p.Options{})
	if err := b.Connect(t.Context(), a.Addrs()); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "peer gauge", func() bool {
		return gauge(t, reg, "imgmesh_peers") == 1
	})
	k1, k2 := routertest.Key(), routertest.Key()
	if err := a.Advertise(t.Context(), k1, k2); err != nil {
		t.Fatal(err)
	}
	if err := a.Withdraw(t.Context(), k1); err != nil {
		t.Fatal(err)
	}
	if got := gauge(t, reg, "imgmesh_advertised_keys"); got != 1 {
		t.Fatalf("advertised keys gauge %v, want 1", got)
	}
	for range 3 {
		if _, err := a.Lookup(t.Context(), routertest.Key(), 1); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var lookups uint64
	for _, mf := range mfs {
		if mf.GetName() != "imgmesh_provider_lookup_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); len(l) != 1 || l[0].GetValue() != "none" {
				t.Fatalf("lookup of unknown keys labelled %v, want result=none", l)
			}
			lookups += m.GetHistogram().GetSampleCount()
		}
	}
	if lookups != 3 {
		t.Fatalf("lookup histogram counted %d lookups, want 3", lookups)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "peer gauge to drop", func() bool {
		return gauge(t, reg, "imgmesh_peers") == 0
	})
	// Closing unregisters: a restarted host can register again.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	newHost(t, p2p.Options{Registerer: reg})
}

// gauge is the value of the gauge registered under name.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("gauge %s not registered", name)
	return 0
}

// A lookup of a key nobody holds ends when the DHT has asked the closest
// peers, long before its budget.
func TestUnknownKeyLookupEndsBeforeBudget(t *testing.T) {
	hs := newFleet(t, 5)
	const budget = 3 * time.Second
	var worst time.Duration
	for i := range 10 {
		ctx, cancel := context.WithTimeout(t.Context(), budget)
		start := time.Now()
		got, err := hs[i%len(hs)].Lookup(ctx, routertest.Key(), 1)
		d := time.Since(start)
		cancel()
		if err != nil || len(got) != 0 {
			t.Fatalf("unknown key: %+v, %v", got, err)
		}
		worst = max(worst, d)
	}
	if worst > budget/3 {
		t.Fatalf("slowest miss took %v of a %v budget: the lookup waited for the deadline", worst, budget)
	}
	t.Logf("slowest of 10 misses on 5 hosts: %v", worst)
}
