package p2p_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/p2p/routertest"
)

// BenchmarkLookup20 measures provider lookups on a 20-host loopback fleet:
// "miss" is a key nobody holds (the DHT must say so), "hit" a key one
// other host holds. It reports p50 and p99 in ms besides ns/op.
func BenchmarkLookup20(b *testing.B) {
	hs := newFleet(b, 20)
	held := make([]string, 64)
	for i := range held {
		held[i] = routertest.Key()
		if err := hs[i%len(hs)].Advertise(context.Background(), held[i]); err != nil {
			b.Fatal(err)
		}
	}
	for i, k := range held { // wait until every record has landed
		waitUntil(b, 10*time.Second, "records to land", func() bool {
			r := hs[(i+1)%len(hs)]
			got, err := r.Lookup(context.Background(), k, 1)
			return err == nil && len(got) == 1
		})
	}
	b.Run("miss", func(b *testing.B) {
		benchLookups(b, func(i int) (*p2p.Host, string, int) {
			return hs[i%len(hs)], routertest.Key(), 0
		})
	})
	b.Run("hit", func(b *testing.B) {
		benchLookups(b, func(i int) (*p2p.Host, string, int) {
			j := i % len(held) // held[j] is on hs[j%20]; ask any other host
			return hs[(j+1+i%(len(hs)-1))%len(hs)], held[j], 1
		})
	})
}

func benchLookups(b *testing.B, next func(i int) (r *p2p.Host, key string, want int)) {
	var ds []time.Duration
	i := 0
	for b.Loop() {
		r, key, want := next(i)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		start := time.Now()
		got, err := r.Lookup(ctx, key, 1)
		d := time.Since(start)
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		if len(got) != want {
			b.Fatalf("lookup of %s on %s: %d holders, want %d", key, r.ID(), len(got), want)
		}
		ds = append(ds, d)
		i++
	}
	slices.Sort(ds)
	if len(ds) > 0 {
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(ds[len(ds)*99/100].Microseconds())/1000, "p99-ms")
	}
}
