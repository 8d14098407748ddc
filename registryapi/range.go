package registryapi

import (
	"errors"
	"strconv"
	"strings"
)

// byteRange is a satisfiable part of a blob: length ≥ 1 bytes from start.
type byteRange struct {
	start, length int64
}

var (
	errRangeSyntax        = errors.New("malformed range")
	errRangeUnsatisfiable = errors.New("range not satisfiable")
)

// maxRanges bounds the ranges of one request (multipart abuse).
const maxRanges = 16

// parseRange parses a Range header ("bytes=a-b, c-, -n") against a blob of
// size bytes. It returns the satisfiable ranges, clamped to the blob, or an
// error: errRangeSyntax for a header to ignore (a unit other than bytes, a
// malformed range set), or errRangeUnsatisfiable for a range with b < a or
// when no range overlaps the blob.
func parseRange(h string, size int64) ([]byteRange, error) {
	unit, spec, ok := strings.Cut(h, "=")
	if !ok || !strings.EqualFold(unit, "bytes") || size < 0 { // range units are case-insensitive
		return nil, errRangeSyntax
	}
	parts := strings.Split(spec, ",")
	if len(parts) > maxRanges {
		return nil, errRangeSyntax
	}
	var out []byteRange
	for _, p := range parts {
		p = strings.TrimSpace(p)
		first, last, ok := strings.Cut(p, "-")
		if !ok {
			return nil, errRangeSyntax
		}
		if first == "" { // suffix: the last n bytes
			n, err := parseOffset(last)
			if err != nil {
				return nil, err
			}
			if n == 0 || size == 0 {
				continue
			}
			n = min(n, size)
			out = append(out, byteRange{start: size - n, length: n})
			continue
		}
		start, err := parseOffset(first)
		if err != nil {
			return nil, err
		}
		end := size - 1
		if last != "" {
			if end, err = parseOffset(last); err != nil {
				return nil, err
			}
			if end < start {
				// Invalid rather than malformed: RFC 9110 lets a server
				// ignore or reject it; the OCI conformance suite wants 416.
				return nil, errRangeUnsatisfiable
			}
		}
		if start >= size {
			continue
		}
		end = min(end, size-1)
		out = append(out, byteRange{start: start, length: end - start + 1})
	}
	if len(out) == 0 {
		return nil, errRangeUnsatisfiable
	}
	return out, nil
}

// parseOffset parses a non-negative decimal without sign or spaces.
func parseOffset(s string) (int64, error) {
	if s == "" || len(s) > 19 {
		return 0, errRangeSyntax
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, errRangeSyntax
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, errRangeSyntax
	}
	return n, nil
}

// formatRange renders ranges as a canonical Range header.
func formatRange(rs []byteRange) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(r.start, 10))
		b.WriteByte('-')
		b.WriteString(strconv.FormatInt(r.start+r.length-1, 10))
	}
	return b.String()
}
