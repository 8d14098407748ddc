// Package discovery is fleet membership over hashicorp/memberlist (SWIM
// gossip): who is in the fleet, how to reach them (libp2p addresses, data
// plane port, registry address) and their labels. Joining needs one
// reachable member (--join); with a fleet key, gossip is encrypted and nodes
// without the key can neither join nor be listed.
package discovery

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultBindAddr is where gossip listens (TCP and UDP) unless told otherwise.
const DefaultBindAddr = "0.0.0.0:7946"

// label is memberlist's cluster label: packets from a memberlist cluster of
// another application (or another wire version of ours) are dropped.
const label = "imgmesh/1"

// Options configure a Fleet.
type Options struct {
	// Name is this node's unique name in the fleet; default hostname plus a
	// short random suffix.
	Name string
	// BindAddr is "host:port" for gossip (TCP and UDP); default
	// DefaultBindAddr. Port 0 picks a free port: see Fleet.Addr.
	BindAddr string
	// AdvertiseAddr is "ip" or "ip:port" others should use to reach this node;
	// default: the bound address, or a private IP of this host.
	AdvertiseAddr string
	// Join lists members ("host:port") to contact at start. Failing to reach
	// any is not fatal: they are retried in the background with a capped
	// backoff; a listed address later missing from the fleet is retried too.
	Join []string
	// Key (32 bytes) encrypts and authenticates gossip. Empty: open fleet.
	Key []byte
	// Meta is what this node tells the fleet about itself.
	Meta Meta
	// OnChange is called, on a goroutine of its own and never under a
	// memberlist lock, when another member joins, updates its meta, fails or
	// leaves. It gets the member's latest state; rapid changes coalesce.
	OnChange func(Member)
	// Logger; memberlist's own log goes to it at debug level.
	Logger *slog.Logger
	// Registerer, if set, gets imgmesh_fleet_members{state}.
	Registerer prometheus.Registerer
	// Timing tunes the gossip clocks; zero fields keep plant-LAN defaults.
	Timing Timing
	// Channel carries the application's fleet-wide messages and state
	// (see Fleet.Broadcast); zero: none.
	Channel Channel
}

// Timing holds the clocks of the gossip protocol. Tests shorten them.
type Timing struct {
	ProbeInterval    time.Duration // failure-detection probe of one member; default 1s
	ProbeTimeout     time.Duration // wait for a probe ack; default 500ms
	GossipInterval   time.Duration // gossip round; default 200ms
	PushPullInterval time.Duration // full state sync with one member; default 15s
	TCPTimeout       time.Duration // dial and push/pull timeout; default 3s
	SuspicionMult    int           // suspicion timeout multiplier; default 4
	Retention        time.Duration // dead/left members stay listed; default 10m
	JoinBackoffMin   time.Duration // first join retry delay; default 1s
	JoinBackoffMax   time.Duration // retry delay cap; default 30s
	LeaveTimeout     time.Duration // wait for the leave to spread on Close; default 3s
}

func (t Timing) withDefaults() Timing {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&t.ProbeInterval, time.Second)
	def(&t.ProbeTimeout, 500*time.Millisecond)
	def(&t.GossipInterval, 200*time.Millisecond)
	def(&t.PushPullInterval, 15*time.Second)
	def(&t.TCPTimeout, 3*time.Second)
	def(&t.Retention, 10*time.Minute)
	def(&t.JoinBackoffMin, time.Second)
	def(&t.JoinBackoffMax, 30*time.Second)
	def(&t.LeaveTimeout, 3*time.Second)
	if t.SuspicionMult <= 0 {
		t.SuspicionMult = 4
	}
	t.JoinBackoffMax = max(t.JoinBackoffMax, t.JoinBackoffMin)
	return t
}

// Fleet is this node's membership in the fleet.
type Fleet struct {
	ml       *memberlist.Memberlist
	del      *delegate
	roster   *roster
	notifier *notifier
	log      *slog.Logger
	t        Timing
	reg      prometheus.Registerer
	coll     *collector

	cancel context.CancelFunc
	wg     sync.WaitGroup // join loop

	mu      sync.RWMutex // write-held by Close to mark it closed; read-held by calls into memberlist
	closed  bool
	stopped chan struct{} // closed when the first Close has finished
	meta    Meta
}

// New starts gossip on BindAddr and, in the background, joins Options.Join.
func New(opts Options) (*Fleet, error) {
	t := opts.Timing.withDefaults()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "discovery")
	if opts.Name == "" {
		opts.Name = DefaultName()
	}
	if opts.BindAddr == "" {
		opts.BindAddr = DefaultBindAddr
	}
	bindHost, bindPort, err := splitHostPort(opts.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("gossip bind address %q: %w", opts.BindAddr, err)
	}
	if bindHost == "" {
		bindHost = "0.0.0.0"
	}
	if len(opts.Key) != 0 && len(opts.Key) != 32 {
		return nil, fmt.Errorf("gossip key: %d bytes, want 32", len(opts.Key))
	}
	enc, kept, err := encodeMeta(opts.Meta, false, MetaMaxSize)
	if err != nil {
		return nil, err
	}
	warnTrimmed(log, opts.Meta, kept)

	f := &Fleet{del: &delegate{meta: enc, bc: newBroadcaster(opts.Channel, log)}, log: log, t: t, reg: opts.Registerer,
		meta: opts.Meta.clone(), stopped: make(chan struct{})}
	f.meta.P2PAddrs = f.meta.P2PAddrs[:kept]
	onChange := opts.OnChange
	if onChange == nil {
		onChange = func(Member) {}
	}
	f.notifier = newNotifier(func(name string) {
		if m, ok := f.roster.get(name, f.suspectAfter()); ok {
			onChange(m)
		}
	})
	f.roster = newRoster(opts.Name, t.Retention, f.notifier.add, func(m Member) {
		log.Info("fleet member gone", "member", m.Name, "addr", m.Addr, "state", m.State)
	})

	c := memberlist.DefaultLANConfig()
	c.Name = opts.Name
	c.Label = label
	c.BindAddr, c.BindPort = bindHost, bindPort
	c.AdvertisePort = bindPort
	if opts.AdvertiseAddr != "" {
		if err := setAdvertise(c, opts.AdvertiseAddr); err != nil {
			return nil, err
		}
	}
	c.ProbeInterval, c.ProbeTimeout = t.ProbeInterval, t.ProbeTimeout
	c.GossipInterval, c.PushPullInterval, c.TCPTimeout = t.GossipInterval, t.PushPullInterval, t.TCPTimeout
	c.SuspicionMult = t.SuspicionMult
	c.GossipToTheDeadTime = max(2*t.PushPullInterval, 30*time.Second)
	c.DeadNodeReclaimTime = 30 * time.Second // a renamed-IP device with a fixed name comes back
	c.DNSConfigPath = ""                     // join hostnames resolve with Go's resolver (hosts file, DNS)
	if len(opts.Key) > 0 {
		c.SecretKey = append([]byte(nil), opts.Key...)
		c.GossipVerifyIncoming, c.GossipVerifyOutgoing = true, true
	}
	c.Delegate = f.del
	c.Events = f.roster
	c.Alive = f.roster
	c.Ping = f.roster
	c.Logger = newStdLogger(log)

	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("gossip on %s: %w", opts.BindAddr, err)
	}
	f.ml = ml
	if f.reg != nil {
		f.coll = newCollector(f)
		if err := f.reg.Register(f.coll); err != nil {
			f.coll = nil
			_ = ml.Shutdown()
			return nil, fmt.Errorf("discovery metrics: %w", err)
		}
	}
	f.notifier.start() // after f.ml is set: callbacks read it
	f.del.bc.start(ml.NumMembers)
	log.Info("gossip started", "name", opts.Name, "addr", f.Addr(), "encrypted", len(opts.Key) > 0)

	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	if len(opts.Join) > 0 {
		f.wg.Add(1)
		go f.joinLoop(ctx, append([]string(nil), opts.Join...))
	}
	return f, nil
}

// LocalName returns this node's name in the fleet.
func (f *Fleet) LocalName() string { return f.ml.LocalNode().Name }

// Addr returns the gossip "host:port" others reach this node at (with the
// real port when BindAddr asked for port 0).
func (f *Fleet) Addr() string { return f.ml.LocalNode().Address() }

// Members returns every member this node knows, itself included, sorted by
// name. Dead and left members stay listed for Timing.Retention.
func (f *Fleet) Members() []Member { return f.roster.list(f.suspectAfter()) }

// suspectAfter is how long, per alive member, silence may last before a
// member is shown as suspect: about three probe rounds, stretched as
// memberlist stretches its probe interval when this node is unhealthy.
func (f *Fleet) suspectAfter() time.Duration {
	health := f.ml.GetHealthScore() // no memberlist node lock: safe under ours
	return 3*f.t.ProbeInterval*time.Duration(health+1) + f.t.ProbeTimeout
}

// Meta returns the meta this node advertises (libp2p addresses trimmed to
// what fits).
func (f *Fleet) Meta() Meta {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.meta.clone()
}

// UpdateMeta replaces this node's meta and gossips it. libp2p addresses that
// do not fit in MetaMaxSize are dropped from the end (logged); meta that does
// not fit without them is refused with ErrMetaTooLarge.
func (f *Fleet) UpdateMeta(m Meta) error {
	enc, kept, err := encodeMeta(m, false, MetaMaxSize)
	if err != nil {
		return err
	}
	warnTrimmed(f.log, m, kept)
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return errClosed
	}
	f.meta = m.clone()
	f.meta.P2PAddrs = f.meta.P2PAddrs[:kept]
	f.del.setMeta(enc)
	f.mu.Unlock()

	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return errClosed
	}
	// UpdateNode only fails when the broadcast did not finish in time; the
	// new meta is set and spreads by gossip and push/pull anyway.
	if err := f.ml.UpdateNode(f.t.TCPTimeout); err != nil {
		f.log.Debug("meta update still spreading", "err", err)
	}
	return nil
}

var errClosed = errors.New("discovery: fleet closed")

// Join contacts members at addrs ("host:port") and merges their view. It
// returns how many answered; an error only if none did.
func (f *Fleet) Join(addrs []string) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return 0, errClosed
	}
	n, err := f.ml.Join(addrs)
	if err != nil {
		return n, fmt.Errorf("gossip join %v: %w", addrs, err)
	}
	return n, nil
}

// Close leaves the fleet (others see this node as "left"), waiting at most
// Timing.LeaveTimeout for the news to spread, then stops gossip and every
// goroutine of the Fleet.
func (f *Fleet) Close() error { return f.shutdown(true) }

// shutdown stops the fleet; without leave, others see this node fail.
func (f *Fleet) shutdown(leave bool) error {
	f.cancel()
	f.wg.Wait() // join loop: at most one in-flight dial (TCPTimeout)
	// The lock only marks the Fleet closed: from then on Join, UpdateMeta,
	// Broadcast and SendTo return errClosed without touching memberlist.
	// The teardown below must not hold it: it waits for the Channel's
	// callback, which may itself broadcast (prefetch answers a push/pull
	// that echoes its report), and that takes the read lock.
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		<-f.stopped // a second Close returns once the first is done
		return nil
	}
	f.closed = true
	meta := f.meta
	f.mu.Unlock()
	defer close(f.stopped)
	var err error
	if leave {
		// Say "leaving" in our meta first, so others record a "left" rather
		// than a failure: memberlist's leave event does not tell them apart.
		if enc, _, e := encodeMeta(meta, true, MetaMaxSize); e == nil {
			f.del.setMeta(enc)
			if e := f.ml.UpdateNode(f.t.LeaveTimeout); e != nil {
				f.log.Debug("leaving flag still spreading", "err", e)
			}
		}
		if e := f.ml.Leave(f.t.LeaveTimeout); e != nil {
			f.log.Warn("gossip leave", "err", e)
		}
	}
	if e := f.ml.Shutdown(); e != nil {
		err = fmt.Errorf("gossip shutdown: %w", e)
	}
	f.notifier.close()
	f.del.bc.close()
	if f.coll != nil {
		f.reg.Unregister(f.coll)
	}
	f.log.Info("gossip stopped", "left", leave)
	return err
}

func warnTrimmed(log *slog.Logger, m Meta, kept int) {
	if kept < len(m.P2PAddrs) {
		log.Warn("node meta full: libp2p addresses dropped", "kept", kept,
			"dropped", m.P2PAddrs[kept:], "limit", MetaMaxSize)
	}
}

// DefaultName is a name for a node that was given none: the host name and
// a random suffix (two nodes on one host must differ).
func DefaultName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "imgmesh"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

func splitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", ps)
	}
	return host, port, nil
}

// setAdvertise applies "ip" or "ip:port" to c.
func setAdvertise(c *memberlist.Config, s string) error {
	host, port := s, c.BindPort
	if h, p, err := splitHostPort(s); err == nil {
		host, port = h, p
	}
	if net.ParseIP(host) == nil {
		return fmt.Errorf("gossip advertise address %q: want an IP or IP:port", s)
	}
	c.AdvertiseAddr, c.AdvertisePort = host, port
	return nil
}
