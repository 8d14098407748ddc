package main

import (
	"strings"
	"testing"
)

// TestBenchFleetBadFlags proves a bad value stops `imgmesh bench fleet`
// (or `bench links`) before anything starts, with one line naming the flag.
func TestBenchFleetBadFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "links: one node", args: []string{"links", "--nodes", "1"}, want: "--nodes 1"},
		{name: "links: ambiguous Mbps", args: []string{"links", "--link", "5Mbps"}, want: "--link: rate \"5Mbps\""},
		{name: "links: no time", args: []string{"links", "--duration", "0s"}, want: "--duration 0s"},
		{name: "rate without unit", args: []string{"--link", "100"}, want: "--link: rate \"100\""},
		{name: "ambiguous Mbps", args: []string{"--uplink", "50Mbps"}, want: "--uplink: rate \"50Mbps\""},
		{name: "size", args: []string{"--size", "big"}, want: "--size: size \"big\""},
		{name: "unknown scenario", args: []string{"--scenarios", "cold,hot"}, want: "--scenarios: scenario \"hot\""},
		{name: "one node", args: []string{"--nodes", "1"}, want: "--nodes 1"},
		{name: "more layers than bytes", args: []string{"--size", "3", "--layers", "4"}, want: "--size 3 B"},
		{name: "unknown flag", args: []string{"--nodez", "3"}, want: "unknown flag: --nodez (see 'imgmesh bench fleet --help')"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"bench", "fleet"}, tt.args...)
			if tt.args[0] == "links" {
				args = append([]string{"bench"}, tt.args...)
			}
			code, stdout, stderr := runCLI(t, nil, args...)
			if code != 1 || stdout != "" {
				t.Fatalf("exit %d, stdout %q; want 1 and nothing", code, stdout)
			}
			if strings.Count(stderr, "\n") != 1 || !strings.HasPrefix(stderr, "imgmesh: ") || !strings.Contains(stderr, tt.want) {
				t.Errorf("stderr = %q, want one line containing %q", stderr, tt.want)
			}
		})
	}
}

func TestBenchFleetHelp(t *testing.T) {
	code, stdout, _ := runCLI(t, nil, "bench", "fleet", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"--nodes", "--size", "--layers", "--link", "--uplink", "--out", "--scenarios", "--loopback", "--keep"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("help lacks %s", flag)
		}
	}
	if strings.Contains(stdout, "--imgmesh") {
		t.Error("help shows the hidden --imgmesh")
	}
}
