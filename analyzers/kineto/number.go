package kineto

import (
	"math"
	"math/bits"
)

var pow10 = [...]uint64{
	1, 10, 100, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10,
	1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
}

// scaledInt converts a JSON number (syntax already checked) times 10^shift
// to an int64, rounding half away from zero, exactly: no float64 is
// involved, so "1.001" microseconds is exactly 1001 nanoseconds. ok is false
// when the value does not fit in an int64.
func scaledInt(tok []byte, shift int) (v int64, ok bool) {
	i := 0
	neg := false
	if i < len(tok) && tok[i] == '-' {
		neg = true
		i++
	}
	var mant uint64
	digits := 0 // significant digits kept in mant
	exp := shift
	seenNonZero := false
	addDigit := func(d byte, frac bool) {
		if d != 0 {
			seenNonZero = true
		}
		if !seenNonZero {
			if frac {
				exp--
			}
			return
		}
		if digits < 19 {
			mant = mant*10 + uint64(d)
			digits++
			if frac {
				exp--
			}
			return
		}
		// Digits past 19 significant ones are below the result's resolution.
		if !frac {
			exp++
		}
	}
	for ; i < len(tok) && tok[i] >= '0' && tok[i] <= '9'; i++ {
		addDigit(tok[i]-'0', false)
	}
	if i < len(tok) && tok[i] == '.' {
		for i++; i < len(tok) && tok[i] >= '0' && tok[i] <= '9'; i++ {
			addDigit(tok[i]-'0', true)
		}
	}
	if i < len(tok) && (tok[i] == 'e' || tok[i] == 'E') {
		i++
		eneg := false
		if tok[i] == '+' || tok[i] == '-' {
			eneg = tok[i] == '-'
			i++
		}
		e := 0
		for ; i < len(tok); i++ {
			if e < 100000 {
				e = e*10 + int(tok[i]-'0')
			}
		}
		if eneg {
			e = -e
		}
		exp += e
	}
	if mant == 0 {
		return 0, true
	}
	switch {
	case exp > 0:
		if exp > 19 {
			return 0, false
		}
		hi, lo := bits.Mul64(mant, pow10[exp])
		if hi != 0 || lo > math.MaxInt64 {
			return 0, false
		}
		mant = lo
	case exp < 0:
		if -exp > 19 {
			return 0, true
		}
		p := pow10[-exp]
		q, r := mant/p, mant%p
		if r >= p-r {
			q++
		}
		mant = q
	}
	if mant > math.MaxInt64 {
		return 0, false
	}
	if neg {
		return -int64(mant), true
	}
	return int64(mant), true
}
