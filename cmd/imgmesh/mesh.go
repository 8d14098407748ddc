package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/discovery"
	"github.com/imgmesh/imgmesh/fleetkey"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/p2p"
)

// mesh is what a node runs to be part of a fleet: a libp2p host (identity,
// mDNS, DHT), gossip membership, and the data plane that serves blobs to
// peers over plain HTTP on its own port.
type mesh struct {
	host   *p2p.Host
	fleet  *discovery.Fleet // nil when gossip could not start
	peers  *dataplane.Client
	key    fleetkey.Key
	dataLn net.Listener
	data   *http.Server
	log    *slog.Logger
}

// startMesh starts gossip, then the libp2p host, and tells the fleet the
// host's identity. The data plane is served by serveData once the store the
// node announces from exists.
func startMesh(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer, ch discovery.Channel) (m *mesh, err error) {
	m = &mesh{log: log}
	started := m // the error returns below set m to nil
	defer func() {
		if err != nil {
			started.close()
		}
	}()
	if cfg.FleetKey != "" {
		if m.key, err = fleetkey.Load(cfg.FleetKey); err != nil {
			return nil, err
		}
	}
	if m.dataLn, err = dataplane.Listen(cfg.DataListen); err != nil {
		return nil, fmt.Errorf("data plane: %w", err)
	}
	meta := discovery.Meta{DataPort: portOf(m.dataLn), Registry: cfg.Listen, Version: version, Labels: cfg.Labels}
	var hostp atomic.Pointer[p2p.Host]
	var gossipKey []byte
	if len(m.key) > 0 {
		gossipKey = m.key.Derive(fleetkey.Gossip)
	}
	m.fleet, err = discovery.New(discovery.Options{
		Name: cfg.NodeName, BindAddr: cfg.GossipListen, Join: cfg.Join, Key: gossipKey, Meta: meta,
		Logger: log, Registerer: reg, Channel: ch,
		OnChange: func(mem discovery.Member) { // a member joined only by gossip: dial its libp2p addresses
			if h := hostp.Load(); h != nil && mem.State == discovery.StateAlive && len(mem.Meta.P2PAddrs) > 0 {
				cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := h.Connect(cctx, mem.Meta.P2PAddrs); err != nil {
					log.Debug("connect to gossip member", "member", mem.Name, "err", err)
				}
			}
		},
	})
	if err != nil {
		// Degrade only when the default port is taken (Docker Swarm also
		// uses 7946); an address the user chose, or fleet members to join,
		// must work.
		if len(cfg.Join) > 0 || cfg.GossipListen != defaultMesh().GossipListen {
			return nil, fmt.Errorf("gossip: %w", err)
		}
		log.Warn("gossip membership not started; peers are found by mDNS and the DHT only", "err", err)
		m.fleet = nil
	}
	gossipAddr := ""
	if m.fleet != nil {
		gossipAddr = m.fleet.Addr()
	}
	m.host, err = p2p.New(ctx, p2p.Options{
		IdentityPath: filepath.Join(cfg.DataDir, "identity.key"),
		ListenAddrs:  cfg.P2PListen,
		FleetKey:     m.key,
		MDNS:         cfg.MDNS,
		Bootstrap:    cfg.Bootstrap,
		Meta:         p2p.Meta{DataPort: meta.DataPort, GossipAddr: gossipAddr, Version: version},
		OnPeer:       m.joinGossipOf,
		Logger:       log,
		Registerer:   reg,
	})
	if err != nil {
		return nil, fmt.Errorf("p2p: %w", err)
	}
	hostp.Store(m.host)
	if m.fleet != nil {
		meta.PeerID, meta.P2PAddrs = m.host.ID(), m.host.Addrs()
		if err := m.fleet.UpdateMeta(meta); err != nil {
			log.Warn("tell the fleet our libp2p identity", "err", err)
		}
	}
	var dataKey []byte
	if len(m.key) > 0 {
		dataKey = m.key.Derive(fleetkey.DataPlane)
	}
	m.peers = dataplane.NewClient(dataplane.ClientOptions{Key: dataKey, NodeID: m.host.ID()})
	log.Info("mesh started", "peer_id", m.host.ID(), "p2p", m.host.Addrs(), "gossip", gossipAddr,
		"data", m.dataLn.Addr().String(), "mdns", cfg.MDNS, "fleet_key", len(m.key) > 0)
	return m, nil
}

// joinGossipOf joins the gossip of a peer found by mDNS or the DHT, so the
// fleet list knows it too.
func (m *mesh) joinGossipOf(pi p2p.PeerInfo) {
	if m.fleet == nil || pi.Meta.GossipAddr == "" {
		return
	}
	host, port, err := net.SplitHostPort(pi.Meta.GossipAddr)
	if err != nil {
		return
	}
	if ip := net.ParseIP(host); (ip == nil || ip.IsUnspecified()) && pi.IP != "" {
		host = pi.IP
	}
	addr := net.JoinHostPort(host, port)
	for _, mem := range m.fleet.Members() {
		if mem.Addr == addr && mem.State == discovery.StateAlive {
			return
		}
	}
	if _, err := m.fleet.Join([]string{addr}); err != nil {
		m.log.Debug("join gossip of peer", "peer", pi.ID, "addr", addr, "err", err)
	}
}

// serveData serves the data plane from store (the node's announcing store).
func (m *mesh) serveData(h http.Handler) {
	m.data = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelWarn)}
	go func() {
		if err := m.data.Serve(m.dataLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			m.log.Error("data plane stopped", "err", err)
		}
	}()
}

func (m *mesh) dataKey() []byte {
	if len(m.key) == 0 {
		return nil
	}
	return m.key.Derive(fleetkey.DataPlane)
}

// members lists the fleet for `imgmesh peers`: gossip membership when it
// runs, else the libp2p peers this node knows.
func (m *mesh) members() []admin.Peer {
	var out []admin.Peer
	if m.fleet != nil {
		for _, mem := range m.fleet.Members() {
			out = append(out, admin.Peer{Name: mem.Name, State: string(mem.State), Gossip: mem.Addr,
				PeerID: mem.Meta.PeerID, P2PAddrs: mem.Meta.P2PAddrs, Registry: mem.Meta.Registry,
				Version: mem.Meta.Version, Labels: mem.Meta.Labels, LastSeen: mem.LastSeen, Self: mem.Self})
		}
		return out
	}
	for _, p := range m.host.Peers() {
		state := "disconnected"
		if p.Connected {
			state = "alive"
		}
		out = append(out, admin.Peer{Name: p.ID, State: state, PeerID: p.ID, P2PAddrs: p.Addrs, Version: p.Meta.Version})
	}
	return out
}

// Members lists the alive fleet members for the swarm's rendezvous ranking
// of who fetches a blob from upstream; without gossip, this node alone.
func (m *mesh) Members() []node.Member {
	if m.fleet == nil {
		return []node.Member{{ID: m.host.ID(), Self: true}}
	}
	out := []node.Member{{ID: m.host.ID(), Self: true}}
	for _, mem := range m.fleet.Members() {
		if mem.State != discovery.StateAlive || mem.Meta.PeerID == "" || mem.Self {
			continue
		}
		host, _, err := net.SplitHostPort(mem.Addr)
		if err != nil || mem.Meta.DataPort == 0 {
			continue
		}
		out = append(out, node.Member{ID: mem.Meta.PeerID, Self: mem.Self,
			DataURL: "http://" + net.JoinHostPort(host, strconv.Itoa(mem.Meta.DataPort))})
	}
	return out
}

// size counts the alive members, this node included.
func (m *mesh) size() int {
	if m.fleet == nil {
		n := 1
		for _, p := range m.host.Peers() {
			if p.Connected {
				n++
			}
		}
		return n
	}
	n := 0
	for _, mem := range m.fleet.Members() {
		if mem.State == discovery.StateAlive {
			n++
		}
	}
	return n
}

// close stops the data plane, leaves the fleet and stops the host.
func (m *mesh) close() {
	if m.data != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := m.data.Shutdown(ctx); err != nil {
			m.log.Warn("data plane shutdown: closing connections still open", "err", err)
			_ = m.data.Close()
		}
		cancel()
	} else if m.dataLn != nil {
		m.dataLn.Close()
	}
	if m.peers != nil {
		m.peers.CloseIdleConnections()
	}
	if m.fleet != nil {
		_ = m.fleet.Close()
	}
	if m.host != nil {
		_ = m.host.Close()
	}
}
