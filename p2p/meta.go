package p2p

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
)

const (
	// maxMetaSize bounds a peer's Meta message.
	maxMetaSize = 4 << 10
	// metaTimeout bounds one Meta exchange.
	metaTimeout = 2 * time.Second
)

// PeerInfo is what this node knows of a peer.
type PeerInfo struct {
	ID    string
	Addrs []string // multiaddrs ending in /p2p/ID
	Meta  Meta
	// HasMeta tells whether Meta was received from the peer.
	HasMeta bool
	// Connected tells whether a connection to the peer is open now.
	Connected bool
	// IP is the peer's address on the connection Meta came over.
	IP string
}

// DataURL is "http://IP:DataPort" of the peer's data plane, or "" if
// unknown.
func (pi PeerInfo) DataURL() string {
	if pi.IP == "" || pi.Meta.DataPort <= 0 || pi.Meta.DataPort > 65535 {
		return ""
	}
	return "http://" + net.JoinHostPort(pi.IP, strconv.Itoa(pi.Meta.DataPort))
}

// GossipJoinAddr is the peer's gossip address to join, with an empty or
// unspecified host (":7946", "0.0.0.0:7946") replaced by the IP we are
// connected to it on. Empty when unknown or malformed.
func (pi PeerInfo) GossipJoinAddr() string {
	host, port, err := net.SplitHostPort(pi.Meta.GossipAddr)
	if err != nil {
		return ""
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		if pi.IP == "" {
			return ""
		}
		host = pi.IP
	}
	return net.JoinHostPort(host, port)
}

type peerState struct {
	meta Meta
	ip   string
}

// Peers lists the peers this node is connected to or has Meta from.
func (p *Host) Peers() []PeerInfo {
	ids := p.h.Network().Peers()
	p.mu.Lock()
	for id := range p.peers {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	p.mu.Unlock()
	out := make([]PeerInfo, 0, len(ids))
	for _, id := range ids {
		out = append(out, p.peerInfo(id))
	}
	slices.SortFunc(out, func(a, b PeerInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

func (p *Host) peerInfo(id peer.ID) PeerInfo {
	pi := PeerInfo{
		ID:        id.String(),
		Addrs:     p2pAddrs(id, p.h.Peerstore().Addrs(id)),
		Connected: p.h.Network().Connectedness(id) == network.Connected,
	}
	p.mu.Lock()
	st := p.peers[id]
	if st != nil {
		pi.Meta, pi.HasMeta, pi.IP = st.meta, true, st.ip
	}
	p.mu.Unlock()
	if pi.Connected {
		if ip := connIP(p.h.Network().ConnsToPeer(id)); ip != "" {
			pi.IP = ip
		}
	}
	return pi
}

// connIP is the remote IP of the first connection, preferring one that is
// not loopback.
func connIP(conns []network.Conn) string {
	var out string
	for _, c := range conns {
		ip, err := manet.ToIP(c.RemoteMultiaddr())
		if err != nil {
			continue
		}
		if !ip.IsLoopback() {
			return ip.String()
		}
		if out == "" {
			out = ip.String()
		}
	}
	return out
}

// serveMeta answers the meta protocol: this node's Meta as JSON.
func (p *Host) serveMeta(s network.Stream) {
	defer s.Close()
	_ = s.SetDeadline(time.Now().Add(metaTimeout))
	if err := json.NewEncoder(s).Encode(p.opts.Meta); err != nil {
		_ = s.Reset()
	}
}

// fetchMeta asks peer id for its Meta; remote is the address of the
// connection it was identified on.
func (p *Host) fetchMeta(ctx context.Context, id peer.ID, remote ma.Multiaddr) {
	ctx, cancel := context.WithTimeout(ctx, metaTimeout)
	defer cancel()
	m, err := p.askMeta(ctx, id)
	if err != nil {
		if !p.closed() {
			p.log.Debug("meta exchange failed", "peer", id, "err", err)
		}
		return
	}
	ip := ""
	if a, err := manet.ToIP(remote); err == nil {
		ip = a.String()
	}
	p.mu.Lock()
	old := p.peers[id]
	changed := old == nil || old.meta != m || old.ip != ip
	p.peers[id] = &peerState{meta: m, ip: ip}
	p.mu.Unlock()
	if changed {
		p.log.Debug("peer meta", "peer", id, "ip", ip, "data_port", m.DataPort, "gossip", m.GossipAddr, "version", m.Version)
		if p.opts.OnPeer != nil {
			p.opts.OnPeer(p.peerInfo(id))
		}
	}
}

func (p *Host) askMeta(ctx context.Context, id peer.ID) (Meta, error) {
	s, err := p.h.NewStream(ctx, id, p.metaID)
	if err != nil {
		return Meta{}, err
	}
	defer s.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = s.SetDeadline(d)
	}
	_ = s.CloseWrite()
	b, err := io.ReadAll(io.LimitReader(s, maxMetaSize+1))
	if err != nil {
		_ = s.Reset()
		return Meta{}, err
	}
	if len(b) > maxMetaSize {
		_ = s.Reset()
		return Meta{}, fmt.Errorf("meta from %s: larger than %d bytes", id, maxMetaSize)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("meta from %s: %w", id, err)
	}
	if m.DataPort < 0 || m.DataPort > 65535 {
		return Meta{}, fmt.Errorf("meta from %s: data port %d out of range", id, m.DataPort)
	}
	return m, nil
}

// eventLoop reacts to identified connections (Meta exchange, new DHT
// peers) and to peers found by mDNS.
func (p *Host) eventLoop(ctx context.Context) {
	defer p.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case ai := <-p.found:
			p.mdnsFound(ctx, ai)
		case ai := <-p.dial:
			p.wg.Go(func() { p.connect(ctx, ai, 0) })
		case e, ok := <-p.sub.Out():
			if !ok {
				return
			}
			evt := e.(event.EvtPeerIdentificationCompleted)
			if slices.Contains(evt.Protocols, p.metaID) {
				remote := evt.Conn.RemoteMultiaddr()
				p.wg.Go(func() { p.fetchMeta(ctx, evt.Peer, remote) })
			}
			if slices.Contains(evt.Protocols, p.kadID) {
				p.mu.Lock()
				p.joined[evt.Peer] = struct{}{}
				p.mu.Unlock()
				select {
				case p.kick <- struct{}{}:
				default: // a kick is already pending
				}
			}
		}
	}
}

// notifiee keeps the peer-count gauge current.
func (p *Host) notifiee() network.Notifiee {
	update := func(n network.Network, _ network.Conn) {
		p.metrics.peers.Set(float64(len(n.Peers())))
	}
	return &network.NotifyBundle{ConnectedF: update, DisconnectedF: update}
}
