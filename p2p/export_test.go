package p2p

import (
	"context"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Hooks for the external tests.

// RoutingTableSize is the number of peers in h's DHT routing table.
func RoutingTableSize(h *Host) int { return h.dht.RoutingTable().Size() }

// AskMeta runs the meta protocol against peer id.
func AskMeta(ctx context.Context, h *Host, id string) (Meta, error) {
	pid, err := peer.Decode(id)
	if err != nil {
		return Meta{}, err
	}
	return h.askMeta(ctx, pid)
}

// OutboundLocalAddrs are the local addresses of h's outgoing connections.
func OutboundLocalAddrs(h *Host) []string {
	var out []string
	for _, c := range h.h.Network().Conns() {
		if c.Stat().Direction == network.DirOutbound {
			out = append(out, c.LocalMultiaddr().String())
		}
	}
	return out
}

// ListenAddrs are h's listen addresses without /p2p/.
func ListenAddrs(h *Host) []string {
	var out []string
	for _, a := range h.h.Network().ListenAddresses() {
		out = append(out, a.String())
	}
	return out
}
