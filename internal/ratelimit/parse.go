package ratelimit

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("invalid rate")

// Parse reads a transfer rate written for humans and returns it in bytes per
// second; 0 means unlimited.
//
// The grammar is NUMBER [PREFIX] [UNIT] ["/s" | "ps"], spaces allowed
// between the parts:
//   - NUMBER: digits with an optional decimal fraction ("1.5");
//   - PREFIX: k, M, G, T are decimal (1000, 1000², ...), Ki, Mi, Gi, Ti
//     binary (1024, 1024², ...); the letter's case does not matter;
//   - UNIT: B (or none) is bytes; bit, bits, or the b of "bps" is bits, so
//     "100Mbit", "100Mbit/s" and "100Mbps" are all 12 500 000 bytes/s. A lone
//     lowercase b ("10Mb") is refused as ambiguous.
//
// So "12500000", "12.5MB/s", "100Mbit" and "0.1Gbps" are the same rate;
// "500k" is 500 000 bytes/s and "10MiB/s" 10 485 760. "" and "0" (with any
// unit) mean unlimited. A rate below 1 byte/s, a negative rate, or one that
// does not fit an int64 is an error, and so is anything else.
func Parse(s string) (int64, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, nil
	}
	if strings.HasPrefix(in, "-") {
		return 0, fmt.Errorf("%w %q: must not be negative", ErrInvalid, s)
	}
	in = strings.TrimPrefix(in, "+")
	num, rest := splitNumber(in)
	if num == "" || strings.HasSuffix(num, ".") || strings.HasPrefix(num, ".") {
		return 0, fmt.Errorf("%w %q: want a number with an optional unit, like 10MB/s or 100Mbit", ErrInvalid, s)
	}
	factor, perBit, err := parseUnit(strings.TrimSpace(rest))
	if err != nil {
		return 0, fmt.Errorf("%w %q: %w", ErrInvalid, s, err)
	}
	v, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w %q: bad number %q", ErrInvalid, s, num)
	}
	v.Mul(v, new(big.Rat).SetInt64(factor))
	if perBit {
		v.Quo(v, big.NewRat(8, 1))
	}
	if v.Sign() == 0 {
		return 0, nil
	}
	// Whole bytes per second, rounded down.
	q := new(big.Int).Quo(v.Num(), v.Denom())
	if !q.IsInt64() {
		return 0, fmt.Errorf("%w %q: too large", ErrInvalid, s)
	}
	if q.Sign() == 0 {
		return 0, fmt.Errorf("%w %q: below 1 byte/s (use 0 for unlimited)", ErrInvalid, s)
	}
	return q.Int64(), nil
}

// splitNumber cuts the leading decimal number (digits, at most one dot) off s.
func splitNumber(s string) (num, rest string) {
	dot := false
	for i, r := range s {
		switch {
		case r >= '0' && r <= '9':
		case r == '.' && !dot:
			dot = true
		default:
			return s[:i], s[i:]
		}
	}
	return s, ""
}

// parseUnit returns the multiplier of a unit suffix and whether it counts
// bits rather than bytes.
func parseUnit(u string) (factor int64, bits bool, err error) {
	// "per second" spelled "/s" or, after a bare b or B, "ps".
	perSecond := strings.HasSuffix(u, "/s")
	u = strings.TrimSpace(strings.TrimSuffix(u, "/s"))
	switch {
	case perSecond && (strings.HasSuffix(u, "bps") || strings.HasSuffix(u, "Bps")):
		return 0, false, errors.New("per second twice: write bps or bit/s")
	case strings.HasSuffix(u, "bps"):
		u, bits = strings.TrimSuffix(u, "bps"), true
	case strings.HasSuffix(u, "Bps"):
		u = strings.TrimSuffix(u, "Bps")
	case strings.HasSuffix(strings.ToLower(u), "bits"):
		u, bits = u[:len(u)-4], true
	case strings.HasSuffix(strings.ToLower(u), "bit"):
		u, bits = u[:len(u)-3], true
	case strings.HasSuffix(u, "B"):
		u = strings.TrimSuffix(u, "B")
	case strings.HasSuffix(u, "b"):
		return 0, false, errors.New("b is ambiguous: write B for bytes or bit for bits")
	}
	u = strings.TrimSpace(u)
	binary := false
	if len(u) == 2 && (u[1] == 'i' || u[1] == 'I') {
		binary, u = true, u[:1]
	}
	if len(u) > 1 {
		return 0, false, fmt.Errorf("unknown unit %q: want B, bit or bps with k, M, G, T (decimal) or Ki, Mi, Gi, Ti (binary)", u)
	}
	base := int64(1000)
	if binary {
		base = 1024
	}
	switch strings.ToLower(u) {
	case "":
		if binary {
			return 0, false, errors.New("i needs a prefix letter, like Mi")
		}
		return 1, bits, nil
	case "k":
		return base, bits, nil
	case "m":
		return base * base, bits, nil
	case "g":
		return base * base * base, bits, nil
	case "t":
		return base * base * base * base, bits, nil
	}
	return 0, false, fmt.Errorf("unknown unit prefix %q: want k, M, G, T, Ki, Mi, Gi or Ti", u)
}
