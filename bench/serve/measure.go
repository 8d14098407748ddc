package main

import (
	"slices"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// stats is the median and the best of xs (0, 0 when empty).
func stats(xs []float64) (median, best float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	return benchkit.Median(xs), slices.Max(xs)
}
