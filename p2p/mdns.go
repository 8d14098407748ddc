package p2p

import (
	"context"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	// dialTimeout bounds a dial to a discovered peer.
	dialTimeout = 5 * time.Second
	// mdnsFallback is how long the peer with the higher ID waits for the
	// lower one to dial before it dials itself.
	mdnsFallback = 3 * time.Second
)

// mdnsServiceName is the DNS-SD service of a protocol prefix: "/imgmesh"
// gives "_imgmesh._udp", so imgmesh nodes never answer IPFS nodes.
func mdnsServiceName(prefix string) string {
	name := strings.ReplaceAll(strings.Trim(prefix, "/"), "/", "-")
	return "_" + name + "._udp"
}

type mdnsNotifee struct{ p *Host }

// HandlePeerFound is called by the mDNS service on a goroutine of its own.
func (n mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	select {
	case n.p.found <- ai:
	case <-n.p.done:
	}
}

// mdnsFound dials a peer found by mDNS. Both peers usually find each other
// at the same moment, so only the one with the lower peer ID dials; the
// other dials only if no connection appeared after mdnsFallback.
func (p *Host) mdnsFound(ctx context.Context, ai peer.AddrInfo) {
	if ai.ID == p.h.ID() {
		return
	}
	ai.Addrs = dropLoopback(ai.Addrs)
	if len(ai.Addrs) == 0 || p.h.Network().Connectedness(ai.ID) == network.Connected {
		return
	}
	wait := time.Duration(0)
	if p.h.ID() > ai.ID {
		wait = mdnsFallback
	}
	p.log.Debug("mdns found peer", "peer", ai.ID, "addrs", ai.Addrs, "dial_after", wait)
	p.wg.Go(func() { p.connect(ctx, ai, wait) })
}

// connect dials ai after wait, unless a connection exists by then.
func (p *Host) connect(ctx context.Context, ai peer.AddrInfo, wait time.Duration) {
	if wait > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	if p.h.Network().Connectedness(ai.ID) == network.Connected {
		return
	}
	ctx, cancel := context.WithTimeout(network.WithForceDirectDial(ctx, "discovered"), dialTimeout)
	defer cancel()
	if err := p.h.Connect(ctx, ai); err != nil && ctx.Err() == nil {
		p.log.Debug("dial failed", "peer", ai.ID, "err", err)
	}
}

// dropLoopback removes loopback addresses when others exist: mDNS hands
// every host the sender's 127.0.0.1 addresses, which on another host reach
// that host itself.
func dropLoopback(addrs []ma.Multiaddr) []ma.Multiaddr {
	var out []ma.Multiaddr
	for _, a := range addrs {
		if !manet.IsIPLoopback(a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return addrs
	}
	return out
}
