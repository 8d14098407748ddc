package p2p

import (
	"slices"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func TestDropLoopback(t *testing.T) {
	lo, lan := ma.StringCast("/ip4/127.0.0.1/tcp/4001"), ma.StringCast("/ip4/10.1.2.3/tcp/4001")
	lo6 := ma.StringCast("/ip6/::1/tcp/4001")
	for _, tc := range []struct {
		name     string
		in, want []ma.Multiaddr
	}{
		{"mixed keeps only the LAN address", []ma.Multiaddr{lo, lan, lo6}, []ma.Multiaddr{lan}},
		{"only loopback is kept (same host)", []ma.Multiaddr{lo, lo6}, []ma.Multiaddr{lo, lo6}},
		{"only LAN", []ma.Multiaddr{lan}, []ma.Multiaddr{lan}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := dropLoopback(tc.in); !slices.EqualFunc(got, tc.want, ma.Multiaddr.Equal) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestMDNSServiceName(t *testing.T) {
	for _, tc := range []struct{ name, prefix, want string }{
		{"default", "/imgmesh", "_imgmesh._udp"},
		{"nested", "/imgmesh/test", "_imgmesh-test._udp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := mdnsServiceName(tc.prefix); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}
