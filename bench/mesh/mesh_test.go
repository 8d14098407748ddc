package main

import (
	"io"
	"math"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPercentile(t *testing.T) {
	ms := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100) // 100, 99, …, 1: unsorted on purpose
	for i := range hundred {
		hundred[i] = 100 - i
	}
	tests := []struct {
		name string
		ds   []time.Duration
		q    float64
		want time.Duration
	}{
		{name: "empty", ds: nil, q: .5, want: 0},
		{name: "one", ds: ms(7), q: .99, want: 7 * time.Millisecond},
		{name: "median of odd", ds: ms(3, 1, 2), q: .5, want: 2 * time.Millisecond},
		{name: "median of even is the lower", ds: ms(4, 1, 3, 2), q: .5, want: 2 * time.Millisecond},
		{name: "p99 of 100", ds: ms(hundred...), q: .99, want: 99 * time.Millisecond},
		{name: "p50 of 100", ds: ms(hundred...), q: .5, want: 50 * time.Millisecond},
		{name: "p100", ds: ms(hundred...), q: 1, want: 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.ds, tt.q); got != tt.want {
				t.Errorf("percentile(%v) = %v, want %v", tt.q, got, tt.want)
			}
		})
	}
	if got := benchkit.Median([]float64{3, 1, 2, 10}); got != 2.5 {
		t.Errorf("median = %v, want 2.5", got)
	}
}

// page is a /metrics excerpt: the provider histogram has two label sets
// (found, none) that histogram must add up.
const page = `# HELP imgmesh_provider_lookup_seconds Time to look up.
# TYPE imgmesh_provider_lookup_seconds histogram
imgmesh_provider_lookup_seconds_bucket{result="found",le="0.001"} 2
imgmesh_provider_lookup_seconds_bucket{result="found",le="0.01"} 8
imgmesh_provider_lookup_seconds_bucket{result="found",le="+Inf"} 10
imgmesh_provider_lookup_seconds_sum{result="found"} 0.05
imgmesh_provider_lookup_seconds_count{result="found"} 10
imgmesh_provider_lookup_seconds_bucket{result="none",le="0.001"} 0
imgmesh_provider_lookup_seconds_bucket{result="none",le="0.01"} 0
imgmesh_provider_lookup_seconds_bucket{result="none",le="+Inf"} 10
imgmesh_provider_lookup_seconds_count{result="none"} 10
# TYPE imgmesh_peers gauge
imgmesh_peers 19
imgmesh_peers_other 5
not a sample
`

func TestParseMetrics(t *testing.T) {
	if got := gauge(page, "imgmesh_peers"); got != 19 {
		t.Errorf("gauge imgmesh_peers = %v, want 19", got)
	}
	if got := gauge(page, "imgmesh_absent"); got != 0 {
		t.Errorf("gauge of a missing metric = %v, want 0", got)
	}
	got := histogram(page, "imgmesh_provider_lookup_seconds")
	want := []bucket{{0.001, 2}, {0.01, 8}, {math.Inf(1), 20}}
	if len(got) != len(want) {
		t.Fatalf("histogram = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("bucket %d = %v, want %v", i, got[i], want[i])
		}
	}
	if h := histogram(page, "imgmesh_absent"); len(h) != 0 {
		t.Errorf("histogram of a missing metric = %v", h)
	}
}

func TestQuantile(t *testing.T) {
	inf := math.Inf(1)
	bs := []bucket{{0.001, 2}, {0.01, 8}, {inf, 10}}
	tests := []struct {
		name      string
		bs        []bucket
		q         float64
		want, tot float64
	}{
		{name: "empty", bs: nil, q: .5, want: 0, tot: 0},
		{name: "no observation", bs: []bucket{{0.001, 0}, {inf, 0}}, q: .5, want: 0, tot: 0},
		{name: "inside the first bucket, from 0", bs: bs, q: .1, want: 0.0005, tot: 10},
		{name: "inside the second bucket", bs: bs, q: .5, want: 0.001 + 0.009*3/6, tot: 10},
		{name: "at a bound", bs: bs, q: .8, want: 0.01, tot: 10},
		{name: "in +Inf gives the highest bound", bs: bs, q: .99, want: 0.01, tot: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, tot := quantile(tt.bs, tt.q)
			if math.Abs(got-tt.want) > 1e-12 || tot != tt.tot {
				t.Errorf("quantile(%v) = %v, %v; want %v, %v", tt.q, got, tot, tt.want, tt.tot)
			}
		})
	}
	// The delta of two scrapes is what happened in between.
	before := []bucket{{0.001, 1}, {0.01, 1}, {inf, 1}}
	after := []bucket{{0.001, 1}, {0.01, 5}, {inf, 5}}
	d := addBuckets(addBuckets(nil, after, false), before, true)
	if got, tot := quantile(d, 1); tot != 4 || math.Abs(got-0.01) > 1e-12 {
		t.Errorf("delta quantile = %v of %v, want 0.01 of 4", got, tot)
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantSize int64
		wantErr  bool
	}{
		{name: "defaults", args: nil, wantSize: 1 << 30},
		{name: "size", args: []string{"-size", "256MiB"}, wantSize: 256 << 20},
		{name: "bad size", args: []string{"-size", "lots"}, wantErr: true},
		{name: "zero size", args: []string{"-size", "0"}, wantErr: true},
		{name: "zero runs", args: []string{"-runs", "0"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := parseFlags(tt.args, io.Discard)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && cfg.size != tt.wantSize {
				t.Errorf("size = %d, want %d", cfg.size, tt.wantSize)
			}
		})
	}
}
