package discovery

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestMetaRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		meta    Meta
		leaving bool
	}{
		{name: "empty", meta: Meta{}},
		{name: "full", meta: Meta{
			PeerID:   "12D3KooWGRUVh9cMtYBrY8zGt2QkZ5xGx5WcQ4LqYh6jB2wP7eTf",
			P2PAddrs: []string{"/ip4/10.0.0.7/tcp/4001", "/ip4/10.0.0.7/udp/4001/quic-v1"},
			DataPort: 5001, Registry: "127.0.0.1:5000", Version: "v0.3.0",
			Labels: map[string]string{"line": "3", "zone": "paint", "empty": ""},
		}},
		{name: "leaving", meta: Meta{PeerID: "p", DataPort: 65535}, leaving: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, kept, err := encodeMeta(tc.meta, tc.leaving, MetaMaxSize)
			if err != nil {
				t.Fatal(err)
			}
			if kept != len(tc.meta.P2PAddrs) {
				t.Fatalf("kept %d of %d addresses with room to spare", kept, len(tc.meta.P2PAddrs))
			}
			got, leaving, err := decodeMeta(b)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tc.meta) || leaving != tc.leaving {
				t.Fatalf("decoded %+v leaving=%v, want %+v leaving=%v", got, leaving, tc.meta, tc.leaving)
			}
			// Later versions append fields: old decoders must still read ours.
			if got, _, err := decodeMeta(append(b, 0xff, 0x01)); err != nil || !got.Equal(tc.meta) {
				t.Fatalf("with appended bytes: %+v, %v", got, err)
			}
		})
	}
}

func TestMetaTrimsAddresses(t *testing.T) {
	var addrs []string
	for i := range 40 {
		addrs = append(addrs, fmt.Sprintf("/ip4/192.168.100.%d/tcp/4001", i))
	}
	m := Meta{PeerID: strings.Repeat("P", 52), P2PAddrs: addrs, Registry: "192.168.100.1:5000",
		Version: "v1", Labels: map[string]string{"zone": "press-shop"}}
	b, kept, err := encodeMeta(m, false, MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > MetaMaxSize {
		t.Fatalf("encoded %d bytes, limit %d", len(b), MetaMaxSize)
	}
	if kept == 0 || kept >= len(addrs) {
		t.Fatalf("kept %d of %d addresses", kept, len(addrs))
	}
	// One more address would not have fitted.
	if next, _, _ := encodeMeta(Meta{PeerID: m.PeerID, P2PAddrs: addrs[:kept+1], Registry: m.Registry,
		Version: m.Version, Labels: m.Labels}, false, 1<<20); len(next) <= MetaMaxSize {
		t.Fatalf("dropped address %d although %d bytes fit", kept, len(next))
	}
	got, _, err := decodeMeta(b)
	if err != nil {
		t.Fatal(err)
	}
	want := m
	want.P2PAddrs = addrs[:kept]
	if !got.Equal(want) {
		t.Fatalf("decoded %+v, want the first %d addresses", got.P2PAddrs, kept)
	}
}

func TestMetaRefusesWhatCannotFit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		meta    Meta
		tooBig  bool
		errPart string
	}{
		{name: "labels too large", meta: Meta{Labels: map[string]string{"notes": strings.Repeat("x", 600)}}, tooBig: true},
		{name: "version too large", meta: Meta{Version: strings.Repeat("v", 520)}, tooBig: true},
		{name: "port out of range", meta: Meta{DataPort: 70000}, errPart: "port"},
		{name: "empty label key", meta: Meta{Labels: map[string]string{"": "x"}}, errPart: "label"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := encodeMeta(tc.meta, false, MetaMaxSize)
			if err == nil {
				t.Fatal("accepted")
			}
			if errors.Is(err, ErrMetaTooLarge) != tc.tooBig || !strings.Contains(err.Error(), tc.errPart) {
				t.Fatalf("error %q", err)
			}
		})
	}
}

func TestDecodeMetaRejectsGarbage(t *testing.T) {
	good, _, err := encodeMeta(Meta{PeerID: "peer", Labels: map[string]string{"a": "b"}, P2PAddrs: []string{"/ip4/1.2.3.4/tcp/1"}}, false, MetaMaxSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{name: "nil", in: nil},
		{name: "one byte", in: []byte{1}},
		{name: "version zero", in: []byte{0, 0, 0, 0, 0, 0, 0, 0}},
		{name: "truncated", in: good[:len(good)-3]},
		{name: "string past end", in: []byte{1, 0, 0, 200, 'a'}},
		{name: "huge count", in: []byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0x03}},
		{name: "port too big", in: []byte{1, 0, 0xff, 0xff, 0x07, 0, 0, 0, 0, 0}},
		{name: "consul-style json", in: []byte(`{"role":"server"}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if m, _, err := decodeMeta(tc.in); err == nil {
				t.Fatalf("decoded %+v", m)
			}
		})
	}
}
