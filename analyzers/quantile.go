package analyzers

import "math"

// nearestRank is the q-quantile of sorted values by the nearest-rank
// method: the smallest value with at least q of the values at or below it,
// sorted[ceil(q*n)-1]. It is always one of the values (p50 of 1 and 3 is 1).
func nearestRank(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	r := int(math.Ceil(q*float64(n) - 1e-9))
	return sorted[min(max(r, 1), n)-1]
}

// linearQuantile is the q-quantile of sorted values interpolated linearly
// between the closest ranks, as numpy.percentile and Excel's PERCENTILE.INC
// compute it: h = (n-1)q, sorted[floor h] + (h - floor h)(next - it).
// (p50 of 1 and 3 is 2.)
func linearQuantile(sorted []float64, q float64) float64 {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	h := float64(n-1) * q
	lo := int(math.Floor(h))
	if lo >= n-1 {
		return sorted[n-1]
	}
	return sorted[lo] + (h-float64(lo))*(sorted[lo+1]-sorted[lo])
}
