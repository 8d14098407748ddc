package discovery

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/hashicorp/memberlist"
)

// MaxGossipMessage is the largest message Broadcast spreads by gossip
// (UDP packets, sent a few times to random members by the sender and by
// every member that receives it for the first time). A larger message goes
// straight to each alive member over TCP.
const MaxGossipMessage = 1024

// maxQueue bounds the gossip waiting to be sent; past it the messages sent
// most often already are dropped first.
const maxQueue = 1024

// seenWindow is how many recent messages a member remembers, to deliver and
// pass on each only once.
const seenWindow = 8192

// maxInbox bounds messages and states received but not yet handed to
// OnMessage/OnState; past it they are dropped (push/pull brings the state
// again).
const maxInbox = 512

// retransmitMult: each member sends a gossiped message to retransmitMult ×
// ceil(log10(fleet size + 1)) random members (memberlist's formula). With
// memberlist's own 4, a fleet of 8 sends it 4 times per member, and in a
// simulation of that epidemic one member or more missed it in 4.8% of
// messages (seen in CI); with 8 it is 0.02% at 8 members and 0.0005% at 20
// (16 sends). A member that misses one still gets the news with the
// sender's State on push/pull. The cost is small: messages ride in the
// gossip rounds' packets, at most GossipNodes packets per round.
const retransmitMult = 8

// Channel is a fleet-wide channel of opaque messages: discovery carries the
// bytes and never looks inside. Set it in Options.
type Channel struct {
	// OnMessage receives every message another member broadcast. Identical
	// bytes are delivered once while recent (seenWindow messages); a message
	// too large for gossip may come again. Called on one goroutine of its
	// own, in arrival order.
	OnMessage func(msg []byte)
	// State returns this node's full state for memberlist's push/pull (when
	// a member joins, and every PushPullInterval with a random member), so
	// that members that were away catch up. Called on memberlist's
	// goroutines: it must be quick and safe for concurrent use.
	State func() []byte
	// OnState receives another member's State. Called like OnMessage.
	OnState func(state []byte)
}

// broadcaster queues outgoing gossip and delivers what arrives.
type broadcaster struct {
	ch    Channel
	queue *memberlist.TransmitLimitedQueue
	log   *slog.Logger

	mu      sync.Mutex
	inbox   []inboxItem
	dropped int
	seen    map[[sha256.Size]byte]bool
	seenLog [][sha256.Size]byte // ring of seenWindow entries
	seenAt  int
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

type inboxItem struct {
	state bool
	b     []byte
}

func newBroadcaster(ch Channel, log *slog.Logger) *broadcaster {
	return &broadcaster{ch: ch, log: log, queue: &memberlist.TransmitLimitedQueue{RetransmitMult: retransmitMult},
		seen: map[[sha256.Size]byte]bool{}, seenLog: make([][sha256.Size]byte, seenWindow),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// start begins delivery; numNodes counts the fleet for retransmits.
func (b *broadcaster) start(numNodes func() int) {
	b.queue.NumNodes = numNodes
	go b.run()
}

// close stops delivery and waits for a running callback to return.
func (b *broadcaster) close() {
	close(b.stop)
	<-b.done
	b.queue.Reset()
}

// firstSight records msg and reports whether it is new. Locks b.mu.
func (b *broadcaster) firstSight(msg []byte) bool {
	h := sha256.Sum256(msg)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.seen[h] {
		return false
	}
	delete(b.seen, b.seenLog[b.seenAt])
	b.seenLog[b.seenAt] = h
	b.seenAt = (b.seenAt + 1) % len(b.seenLog)
	b.seen[h] = true
	return true
}

// enqueue adds gossip to send, bounded by maxQueue.
func (b *broadcaster) enqueue(m memberlist.Broadcast) {
	b.queue.QueueBroadcast(m)
	if b.queue.NumQueued() > maxQueue {
		b.queue.Prune(maxQueue)
	}
}

// received copies p (memberlist reuses it) into the inbox. A message seen
// for the first time is passed on: memberlist's senders reach only a few
// random members, so every receiver gossips it once more.
func (b *broadcaster) received(p []byte, state bool) {
	if len(p) == 0 || (state && b.ch.OnState == nil) || (!state && b.ch.OnMessage == nil) {
		return
	}
	if !state {
		if !b.firstSight(p) {
			return
		}
		if len(p) <= MaxGossipMessage {
			b.enqueue(message(bytes.Clone(p)))
		}
	}
	b.mu.Lock()
	if len(b.inbox) >= maxInbox {
		b.dropped++
		b.mu.Unlock()
		return
	}
	b.inbox = append(b.inbox, inboxItem{state: state, b: bytes.Clone(p)})
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *broadcaster) run() {
	defer close(b.done)
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
		}
		b.mu.Lock()
		items, dropped := b.inbox, b.dropped
		b.inbox, b.dropped = nil, 0
		b.mu.Unlock()
		if dropped > 0 {
			b.log.Warn("fleet messages dropped: handler too slow", "dropped", dropped)
		}
		for _, it := range items {
			select {
			case <-b.stop:
				return
			default:
			}
			if it.state {
				b.ch.OnState(it.b)
			} else {
				b.ch.OnMessage(it.b)
			}
		}
	}
}

// localState is memberlist's LocalState.
func (b *broadcaster) localState() []byte {
	if b.ch.State == nil {
		return nil
	}
	return b.ch.State()
}

// message is one queued broadcast, unique: the queue never compares it.
type message []byte

func (m message) Invalidates(memberlist.Broadcast) bool { return false }
func (m message) Message() []byte                       { return m }
func (m message) Finished()                             {}
func (m message) UniqueBroadcast()                      {}

// namedMessage replaces a queued message of the same name.
type namedMessage struct {
	name string
	b    []byte
}

func (m namedMessage) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == m.name
}
func (m namedMessage) Message() []byte { return m.b }
func (m namedMessage) Finished()       {}
func (m namedMessage) Name() string    { return m.name }

// ErrEmptyMessage: Broadcast was given no bytes.
var ErrEmptyMessage = errors.New("discovery: empty message")

// Broadcast sends msg to every other member: by gossip when it fits in
// MaxGossipMessage bytes (it reaches members in a few gossip rounds, even
// those this node cannot reach directly), else over TCP to each alive
// member, which may take up to Timing.TCPTimeout per unreachable one.
// Members that are away get it only through the Channel's State on
// push/pull. Broadcast returns without waiting for gossip.
func (f *Fleet) Broadcast(msg []byte) error { return f.BroadcastNamed("", msg) }

// BroadcastNamed is Broadcast, except that a gossiped message still queued
// here under the same name is dropped for this one: the fleet hears the
// latest of a stream of updates (progress), not a backlog. "" names nothing.
func (f *Fleet) BroadcastNamed(name string, msg []byte) error {
	if len(msg) == 0 {
		return ErrEmptyMessage
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return errClosed
	}
	f.del.bc.firstSight(msg) // relayed back to us: not delivered
	if len(msg) <= MaxGossipMessage {
		if name != "" {
			f.del.bc.enqueue(namedMessage{name: name, b: bytes.Clone(msg)})
		} else {
			f.del.bc.enqueue(message(bytes.Clone(msg)))
		}
		return nil
	}
	var errs []error
	for _, m := range f.Members() { // not ml.Members(): memberlist mutates those nodes as we read
		if m.Self || m.State == StateDead || m.State == StateLeft {
			continue
		}
		if err := f.sendTCP(m, msg); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		f.log.Debug("broadcast not delivered to every member", "err", errors.Join(errs...))
	}
	return nil
}

// ErrNoMember: SendTo named no member that is alive (or suspect).
var ErrNoMember = errors.New("discovery: no such member")

// SendTo sends msg to one member over TCP, for news that must not depend
// on gossip's luck (a final report to the member waiting for it). The
// member's Channel.OnMessage receives it as it would a broadcast (once,
// and it passes it on by gossip). It waits up to Timing.TCPTimeout.
func (f *Fleet) SendTo(name string, msg []byte) error {
	if len(msg) == 0 {
		return ErrEmptyMessage
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return errClosed
	}
	for _, m := range f.Members() {
		if m.Name == name && !m.Self && m.State != StateDead && m.State != StateLeft {
			return f.sendTCP(m, msg)
		}
	}
	return fmt.Errorf("%w: %q", ErrNoMember, name)
}

// sendTCP hands msg to memberlist's reliable (TCP) user-message path.
func (f *Fleet) sendTCP(m Member, msg []byte) error {
	host, port, err := splitHostPort(m.Addr)
	if err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	to := &memberlist.Node{Name: m.Name, Addr: net.ParseIP(host), Port: uint16(port)}
	if err := f.ml.SendReliable(to, msg); err != nil {
		return fmt.Errorf("%s: %w", m.Name, err)
	}
	return nil
}
