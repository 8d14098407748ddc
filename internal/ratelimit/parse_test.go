package ratelimit

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		want int64
	}{
		{name: "empty is unlimited", in: "", want: 0},
		{name: "zero is unlimited", in: "0", want: 0},
		{name: "zero with unit", in: "0MB/s", want: 0},
		{name: "plain bytes", in: "12500000", want: 12_500_000},
		{name: "spaces around", in: "  12500000 ", want: 12_500_000},
		{name: "bytes unit", in: "512B", want: 512},
		{name: "bytes per second", in: "512B/s", want: 512},
		{name: "decimal MB/s", in: "10MB/s", want: 10_000_000},
		{name: "decimal MB", in: "10MB", want: 10_000_000},
		{name: "binary MiB/s", in: "10MiB/s", want: 10 << 20},
		{name: "binary Mi without B", in: "10Mi", want: 10 << 20},
		{name: "Mbit", in: "100Mbit", want: 12_500_000},
		{name: "Mbit/s", in: "100Mbit/s", want: 12_500_000},
		{name: "Mbits", in: "100Mbits", want: 12_500_000},
		{name: "Mbps", in: "100Mbps", want: 12_500_000},
		{name: "Gbps", in: "1Gbps", want: 125_000_000},
		{name: "MBps is bytes", in: "2MBps", want: 2_000_000},
		{name: "Gibit", in: "1Gibit", want: 1 << 27},
		{name: "k without unit is bytes", in: "500k", want: 500_000},
		{name: "K upper case", in: "500K", want: 500_000},
		{name: "KiB", in: "64KiB", want: 64 << 10},
		{name: "lower case prefix", in: "10mB/s", want: 10_000_000},
		{name: "space before unit", in: "10 MB/s", want: 10_000_000},
		{name: "fraction", in: "1.5MB/s", want: 1_500_000},
		{name: "fraction of bits rounds down", in: "12.3456789bit", want: 1},
		{name: "leading plus", in: "+1k", want: 1000},
		{name: "terabit", in: "1Tbps", want: 125_000_000_000},
		{name: "tebibyte", in: "2TiB/s", want: 2 << 40},
		{name: "largest int64", in: "9223372036854775807", want: math.MaxInt64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if got != tc.want {
				t.Fatalf("Parse(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		in   string
		msg  string // part of the error
	}{
		{name: "garbage", in: "fast", msg: "want a number"},
		{name: "negative", in: "-10MB", msg: "negative"},
		{name: "negative zero", in: "-0", msg: "negative"},
		{name: "overflow", in: "9223372036854775808", msg: "too large"},
		{name: "overflow by unit", in: "10000000000TB/s", msg: "too large"},
		{name: "below one byte", in: "7bit", msg: "below 1 byte/s"},
		{name: "ambiguous b", in: "10Mb", msg: "ambiguous"},
		{name: "ambiguous b per second", in: "10mb/s", msg: "ambiguous"},
		{name: "upper case S", in: "10MB/S", msg: "unknown unit"},
		{name: "unknown unit", in: "10XB", msg: "unknown unit prefix"},
		{name: "long unit", in: "10 megabytes", msg: "unknown unit"},
		{name: "i without prefix", in: "10iB", msg: "prefix"},
		{name: "exponent", in: "1e6", msg: "unknown unit"},
		{name: "hex", in: "0x10", msg: "unknown unit"},
		{name: "two dots", in: "1.2.3MB", msg: "unknown unit"},
		{name: "trailing dot", in: "1.MB", msg: "want a number"},
		{name: "leading dot", in: ".5MB", msg: "want a number"},
		{name: "unit only", in: "MB/s", msg: "want a number"},
		{name: "per second twice", in: "10Mbps/s", msg: "per second twice"},
		{name: "NaN", in: "NaN", msg: "want a number"},
		{name: "Inf", in: "Inf", msg: "want a number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %d, want an error", tc.in, got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q): %v does not wrap ErrInvalid", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("Parse(%q): error %q should name the input and say %q", tc.in, err, tc.msg)
			}
		})
	}
}
