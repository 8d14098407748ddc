package p2p

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	quic "github.com/libp2p/go-libp2p/p2p/transport/quic"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/fleetkey"
)

// Defaults of Options.
const (
	DefaultProtocolPrefix    = "/imgmesh"
	DefaultReprovideInterval = time.Hour
	// DefaultLookupTimeout bounds a Lookup whose context has no deadline.
	DefaultLookupTimeout = 5 * time.Second
)

// DefaultListenAddrs are used when Options.ListenAddrs is empty.
var DefaultListenAddrs = []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"}

// Meta is what a node tells its peers about itself over the meta protocol.
type Meta struct {
	// DataPort is the TCP port of the node's data plane (0: none).
	DataPort int `json:"data_port,omitempty"`
	// GossipAddr is the node's memberlist address, "HOST:PORT".
	GossipAddr string `json:"gossip_addr,omitempty"`
	// Version is the node's software version.
	Version string `json:"version,omitempty"`
}

// Options configure New.
type Options struct {
	// IdentityPath is the node's private key file (ed25519), created with
	// mode 0600 when missing. Empty: a new identity on every start.
	IdentityPath string
	// ListenAddrs are libp2p multiaddrs; default DefaultListenAddrs.
	ListenAddrs []string
	// FleetKey, when not empty, makes this a libp2p private network: only
	// nodes with the same key can connect. QUIC cannot run with it, so QUIC
	// listen addresses are dropped.
	FleetKey fleetkey.Key
	// MDNS finds peers on the local link by multicast DNS.
	MDNS bool
	// Bootstrap are peers to connect to at start, multiaddrs ending in
	// /p2p/ID. They are retried while the routing table is empty.
	Bootstrap []string
	// Meta is what this node tells its peers.
	Meta Meta
	// OnPeer, when set, is called (on its own goroutine) each time a peer's
	// Meta is learned or changes. It must return promptly: Close waits.
	OnPeer func(PeerInfo)
	// ProtocolPrefix of the DHT and of the meta protocol; default "/imgmesh".
	// Nodes with different prefixes do not route for each other.
	ProtocolPrefix string
	// ReprovideInterval is how often advertised keys are announced again;
	// default 1h. Peers keep a record for 3 intervals of their own setting.
	ReprovideInterval time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Registerer for the metrics; nil: not registered.
	Registerer prometheus.Registerer
}

// Host is a libp2p node of the fleet with DHT content routing. It
// implements Router.
type Host struct {
	h        host.Host
	dht      *dht.IpfsDHT
	msgr     *pb.ProtocolMessenger
	mdns     mdns.Service
	sub      event.Subscription
	log      *slog.Logger
	opts     Options
	metrics  *metrics
	metaID   protocol.ID
	kadID    protocol.ID
	cancel   context.CancelFunc
	done     chan struct{}
	found    chan peer.AddrInfo // from mDNS
	dial     chan peer.AddrInfo // holders to learn the Meta of
	kick     chan struct{}      // wakes the reprovider for joined peers
	wg       sync.WaitGroup
	closeErr error
	once     sync.Once

	mu     sync.Mutex
	keys   map[string]cid.Cid   // advertised, by key
	joined map[peer.ID]struct{} // DHT peers identified since the reprovider last looked
	peers  map[peer.ID]*peerState
}

var _ Router = (*Host)(nil)

// New starts a libp2p host and its DHT. ctx bounds only the start; Close
// stops the host.
func New(ctx context.Context, o Options) (*Host, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ProtocolPrefix == "" {
		o.ProtocolPrefix = DefaultProtocolPrefix
	}
	if o.ReprovideInterval <= 0 {
		o.ReprovideInterval = DefaultReprovideInterval
	}
	if len(o.ListenAddrs) == 0 {
		o.ListenAddrs = DefaultListenAddrs
	}
	bootstrap, err := parseAddrInfos(o.Bootstrap)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	key, err := loadIdentity(o.IdentityPath)
	if err != nil {
		return nil, err
	}
	listen, quicAddrs, err := splitListen(o.ListenAddrs)
	if err != nil {
		return nil, err
	}
	lopts := []libp2p.Option{
		libp2p.Identity(key),
		libp2p.UserAgent("imgmesh/" + o.Meta.Version),
		// Without reuseport, two peers dialling each other at the same
		// moment get two connections instead of one TCP simultaneous open,
		// on which both sides' TLS would act as client.
		libp2p.Transport(tcp.NewTCPTransport, tcp.DisableReuseport()),
		libp2p.DisableRelay(),
		libp2p.DisableMetrics(),
	}
	if len(o.FleetKey) > 0 {
		psk, err := pnet.DecodeV1PSK(bytes.NewReader(o.FleetKey.PSK()))
		if err != nil {
			return nil, fmt.Errorf("fleet key: %w", err)
		}
		lopts = append(lopts, libp2p.PrivateNetwork(psk))
		if len(quicAddrs) > 0 {
			o.Logger.Info("fleet key set: QUIC disabled (libp2p private networks run over TCP only)", "dropped", quicAddrs)
		}
	} else {
		listen = append(listen, quicAddrs...)
		if len(quicAddrs) > 0 {
			lopts = append(lopts, libp2p.Transport(quic.NewTransport))
		}
	}
	if len(listen) == 0 {
		return nil, errors.New("p2p: no usable listen address (QUIC cannot run with a fleet key)")
	}
	lopts = append(lopts, libp2p.ListenAddrs(listen...))
	h, err := libp2p.New(lopts...)
	if err != nil {
		return nil, fmt.Errorf("p2p: %w", err)
	}
	p := &Host{
		h:      h,
		log:    o.Logger.With("peer_id", h.ID().String()),
		opts:   o,
		metaID: protocol.ID(o.ProtocolPrefix + "/meta/1.0.0"),
		kadID:  protocol.ID(o.ProtocolPrefix + "/kad/1.0.0"),
		done:   make(chan struct{}),
		found:  make(chan peer.AddrInfo, 64),
		dial:   make(chan peer.AddrInfo, 16),
		kick:   make(chan struct{}, 1),
		keys:   map[string]cid.Cid{},
		joined: map[peer.ID]struct{}{},
		peers:  map[peer.ID]*peerState{},
	}
	if err := p.start(ctx, bootstrap); err != nil {
		_ = p.Close()
		return nil, err
	}
	return p, nil
}

func (p *Host) start(ctx context.Context, bootstrap []peer.AddrInfo) error {
	o := p.opts
	validity := 3 * o.ReprovideInterval
	d, err := dht.New(p.h,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(protocol.ID(o.ProtocolPrefix)),
		dht.DisableValues(),
		dht.BootstrapPeers(bootstrap...),
		// A node's 127.0.0.1 addresses reach another host itself: keep
		// them out of records unless a node has no other address.
		dht.AddressFilter(dropLoopback),
		dht.ProviderManagerOpts(records.ProvideValidity(validity), records.ProviderAddrTTL(validity)),
	)
	if err != nil {
		return fmt.Errorf("p2p: dht: %w", err)
	}
	p.dht = d
	if p.msgr, err = pb.NewProtocolMessenger(d.MessageSender()); err != nil {
		return fmt.Errorf("p2p: dht messenger: %w", err)
	}
	if p.metrics, err = newMetrics(o.Registerer); err != nil {
		return err
	}
	p.h.SetStreamHandler(p.metaID, p.serveMeta)
	if p.sub, err = p.h.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted)); err != nil {
		return fmt.Errorf("p2p: %w", err)
	}
	p.h.Network().Notify(p.notifiee())

	life, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.wg.Add(2)
	go p.eventLoop(life)
	go p.reprovideLoop(life)
	if len(bootstrap) > 0 {
		p.wg.Add(1)
		go p.bootstrap(life, bootstrap)
	}
	if o.MDNS {
		svc := mdns.NewMdnsService(p.h, mdnsServiceName(o.ProtocolPrefix), mdnsNotifee{p})
		if err := svc.Start(); err != nil {
			return fmt.Errorf("p2p: mdns: %w", err)
		}
		p.mdns = svc
	}
	p.log.Info("p2p host started", "addrs", p.Addrs(), "mdns", o.MDNS, "private_network", len(o.FleetKey) > 0)
	return ctx.Err()
}

// ID returns the node's peer ID.
func (p *Host) ID() string { return p.h.ID().String() }

// PeerCount implements Router: the peers connected now.
func (p *Host) PeerCount() int { return len(p.h.Network().Peers()) }

// Addrs returns the node's listen multiaddrs, each ending in /p2p/ID.
func (p *Host) Addrs() []string {
	return p2pAddrs(p.h.ID(), p.h.Addrs())
}

// Connect dials peers given as multiaddrs ending in /p2p/ID (several
// addresses of one peer are tried together). It returns the joined errors
// of the peers it could not reach.
func (p *Host) Connect(ctx context.Context, addrs []string) error {
	infos, err := parseAddrInfos(addrs)
	if err != nil {
		return err
	}
	errs := make([]error, len(infos))
	var wg sync.WaitGroup
	for i, ai := range infos {
		if ai.ID == p.h.ID() {
			continue
		}
		wg.Go(func() {
			if err := p.h.Connect(network.WithForceDirectDial(ctx, "connect"), ai); err != nil {
				errs[i] = fmt.Errorf("connect %s: %w", ai.ID, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops mDNS, the DHT and the host, and waits for their goroutines.
func (p *Host) Close() error {
	p.once.Do(func() {
		close(p.done)
		if p.cancel != nil {
			p.cancel()
		}
		var errs []error
		if p.mdns != nil {
			errs = append(errs, p.mdns.Close())
		}
		if p.sub != nil {
			errs = append(errs, p.sub.Close())
		}
		p.wg.Wait()
		if p.dht != nil {
			errs = append(errs, p.dht.Close())
		}
		errs = append(errs, p.h.Close())
		if p.metrics != nil {
			p.metrics.unregister()
		}
		p.closeErr = errors.Join(errs...)
	})
	return p.closeErr
}

func (p *Host) closed() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// bootstrap dials the bootstrap peers until at least one answers, backing
// off up to 30s. Afterwards the DHT redials them if its table empties.
func (p *Host) bootstrap(ctx context.Context, peers []peer.AddrInfo) {
	defer p.wg.Done()
	wait := 250 * time.Millisecond
	for {
		ok := 0
		for _, ai := range peers {
			// Force: the swarm's dial backoff would hold off a peer that
			// just came up for seconds.
			cctx, cancel := context.WithTimeout(network.WithForceDirectDial(ctx, "bootstrap"), dialTimeout)
			err := p.h.Connect(cctx, ai)
			cancel()
			if err == nil {
				ok++
			} else if ctx.Err() == nil {
				p.log.Debug("bootstrap peer unreachable", "peer", ai.ID, "err", err)
			}
		}
		if ok > 0 {
			p.dht.RefreshRoutingTable()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// splitListen parses listen addresses and separates the QUIC ones.
func splitListen(addrs []string) (tcpish, quicAddrs []ma.Multiaddr, err error) {
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, nil, fmt.Errorf("p2p: listen address %q: %w", s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_UDP); err == nil {
			quicAddrs = append(quicAddrs, a)
		} else {
			tcpish = append(tcpish, a)
		}
	}
	return tcpish, quicAddrs, nil
}

func parseAddrInfos(addrs []string) ([]peer.AddrInfo, error) {
	mas := make([]ma.Multiaddr, 0, len(addrs))
	for _, s := range addrs {
		a, err := ma.NewMultiaddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		if _, err := a.ValueForProtocol(ma.P_P2P); err != nil {
			return nil, fmt.Errorf("address %q: no /p2p/ID part", s)
		}
		mas = append(mas, a)
	}
	return peer.AddrInfosFromP2pAddrs(mas...)
}

func p2pAddrs(id peer.ID, addrs []ma.Multiaddr) []string {
	out := make([]string, 0, len(addrs))
	suffix := "/p2p/" + id.String()
	for _, a := range addrs {
		s := a.String()
		if !strings.HasSuffix(s, suffix) {
			s += suffix
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
