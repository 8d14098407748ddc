package fleetkey

import (
	"bytes"
	"strings"
	"testing"
)

func TestRoundTripAndDerive(t *testing.T) {
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(bytes.NewReader(k.PSK()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, k) {
		t.Fatal("decoded key differs")
	}
	other, _ := Generate()
	if bytes.Equal(k.Derive(Gossip), k.Derive(DataPlane)) {
		t.Fatal("purposes share key material")
	}
	if bytes.Equal(k.Derive(Gossip), other.Derive(Gossip)) {
		t.Fatal("different fleet keys derive the same gossip key")
	}
	if len(k.Derive(Gossip)) != 32 {
		t.Fatal("gossip key must be 32 bytes for memberlist")
	}
}

func TestDecodeRejectsBadFiles(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"wrong header", "/key/swarm/psk/2.0.0/\n/base16/\n" + strings.Repeat("ab", 32)},
		{"base64", "/key/swarm/psk/1.0.0/\n/base64/\nqqqq"},
		{"short", "/key/swarm/psk/1.0.0/\n/base16/\nabcd"},
		{"not hex", "/key/swarm/psk/1.0.0/\n/base16/\n" + strings.Repeat("zz", 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(strings.NewReader(tc.in)); err == nil {
				t.Fatal("accepted a bad key file")
			}
		})
	}
}
