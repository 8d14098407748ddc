package main

import (
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile is the nearest-rank q-quantile (0 < q ≤ 1) of ds: the
// smallest value with at least q of the samples at or below it. 0 when ds
// is empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// bucket is one cumulative histogram bucket: count observations ≤ le.
type bucket struct {
	le    float64
	count float64
}

// sample splits one line of the Prometheus text format into the metric
// name, the labels text (between braces, "" without) and the value.
func sample(line string) (name, labels string, value float64, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	rest := line
	if i := strings.IndexByte(line, '{'); i >= 0 {
		j := strings.LastIndexByte(line, '}')
		if j < i {
			return "", "", 0, false
		}
		name, labels, rest = line[:i], line[i+1:j], line[j+1:]
	} else {
		name, rest, _ = strings.Cut(line, " ")
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 { // a timestamp may follow the value
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return "", "", 0, false
	}
	return name, labels, v, true
}

// label is the value of label key in a labels text like `a="1",le="0.5"`.
func label(labels, key string) (string, bool) {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if ok && k == key {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

// gauge sums every sample of metric name in a /metrics page (0 if none).
func gauge(text, name string) float64 {
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if n, _, v, ok := sample(line); ok && n == name {
			sum += v
		}
	}
	return sum
}

// histogram reads the cumulative buckets of histogram name from a /metrics
// page, summed over every other label (e.g. result="found" and "none"),
// sorted by bound; the last is +Inf.
func histogram(text, name string) []bucket {
	byLE := map[float64]float64{}
	for _, line := range strings.Split(text, "\n") {
		n, labels, v, ok := sample(line)
		if !ok || n != name+"_bucket" {
			continue
		}
		le, ok := label(labels, "le")
		if !ok {
			continue
		}
		bound, err := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		if err != nil {
			continue
		}
		byLE[bound] += v
	}
	out := make([]bucket, 0, len(byLE))
	for le, c := range byLE {
		out = append(out, bucket{le, c})
	}
	slices.SortFunc(out, func(a, b bucket) int {
		switch {
		case a.le < b.le:
			return -1
		case a.le > b.le:
			return 1
		}
		return 0
	})
	return out
}

// addBuckets adds b's counts to a's bucket by bucket (same bounds; a nil a
// takes b's). sub subtracts instead.
func addBuckets(a, b []bucket, sub bool) []bucket {
	if a == nil {
		a = make([]bucket, len(b))
		for i := range b {
			a[i].le = b[i].le
		}
	}
	for i := range min(len(a), len(b)) {
		if sub {
			a[i].count -= b[i].count
		} else {
			a[i].count += b[i].count
		}
	}
	return a
}

// quantile estimates the q-quantile from cumulative buckets as Prometheus'
// histogram_quantile does: linear inside the bucket holding the rank, from
// 0 for the first; a rank in the +Inf bucket gives the highest finite bound.
// It returns the total count too; 0, 0 when there is none.
func quantile(bs []bucket, q float64) (float64, float64) {
	if len(bs) == 0 || bs[len(bs)-1].count <= 0 {
		return 0, 0
	}
	total := bs[len(bs)-1].count
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			if math.IsInf(b.le, 1) {
				return lower, total
			}
			if b.count == below {
				return b.le, total
			}
			return lower + (b.le-lower)*(rank-below)/(b.count-below), total
		}
		lower, below = b.le, b.count
	}
	return lower, total
}
