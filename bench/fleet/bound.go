package fleet

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// Bound is the physical lower bound on the time for n devices, each on a
// link of b bytes/s, to receive s bytes that enter the network through an
// uplink of u bytes/s:
//
//	T >= max(S/u, S/B, N*S/(u+N*B))
//
// The uplink must carry the image at least once, each device must receive
// it, and the N*S bytes received enter the fleet either over the uplink or
// over the devices' upload links (N*B at most). b = 0 means unshaped links
// (only S/u remains).
func Bound(n int, s int64, u, b float64) time.Duration {
	S := float64(s)
	t := S / u
	if b > 0 {
		t = max(t, S/b, float64(n)*S/(u+float64(n)*b))
	}
	return seconds(t)
}

// WarmBound is the bound when a device in the fleet already holds the
// image: each of the others must still receive it over its own link, S/B.
// b = 0 (unshaped) gives 0.
func WarmBound(s int64, b float64) time.Duration {
	if b <= 0 {
		return 0
	}
	return seconds(float64(s) / b)
}

// BaselineTime is how long the baseline takes on ideal links: the uplink
// carries the image once per device, and no device beats its own link.
func BaselineTime(n int, s int64, u, b float64) time.Duration {
	t := float64(n) * float64(s) / u
	if b > 0 {
		t = max(t, float64(s)/b)
	}
	return seconds(t)
}

func seconds(f float64) time.Duration {
	if math.IsInf(f, 0) || f > math.MaxInt64/float64(time.Second) {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(f * float64(time.Second))
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of xs:
// the smallest value with at least p% of xs at or below it. p100 is the
// maximum, p50 of an even count the lower middle value. NaN when empty.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 || !(p > 0) || p > 100 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

// ProjectShared projects when transfers cut at time cut would finish if
// they went on sharing a link of rate bytes/s fairly, none faster than
// perDevice bytes/s (0: no such cap): the device with the least left
// finishes first, then the others share what it used. remaining[i] is
// what device i still lacks; the result is in the same order.
func ProjectShared(cut float64, remaining []float64, rate, perDevice float64) []float64 {
	order := make([]int, len(remaining))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(remaining[a], remaining[b]) })
	out := make([]float64, len(remaining))
	t, got := cut, 0.0 // got: bytes each unfinished device received since the cut
	for k, i := range order {
		share := rate / float64(len(order)-k)
		if perDevice > 0 {
			share = min(share, perDevice)
		}
		t += (remaining[i] - got) / share
		got = remaining[i]
		out[i] = t
	}
	return out
}
