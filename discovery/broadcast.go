package discovery

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hashicorp/memberlist"
)

// MaxGossipMessage is the largest message Broadcast spreads by gossip
// (UDP packets piggybacked on probes, retransmitted a few times by every
// member). A larger message goes straight to each alive member over TCP.
const MaxGossipMessage = 1024

// maxInbox bounds messages and states received but not yet handed to
// OnMessage/OnState; past it they are dropped (push/pull brings the state
// again).
const maxInbox = 512

// retransmitMult: each member retransmits a gossiped message about
// RetransmitMult × log10(fleet size + 1) times.
const retransmitMult = 4

// Channel is a fleet-wide channel of opaque messages: discovery carries the
// bytes and never looks inside. Set it in Options.
type Channel struct {
	// OnMessage receives every message another member broadcast, once per
	// arrival (gossip may deliver a message twice: make handling
	// idempotent). Called on one goroutine of its own, in arrival order.
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

// received copies p (memberlist reuses it) into the inbox.
func (b *broadcaster) received(p []byte, state bool) {
	if len(p) == 0 || (state && b.ch.OnState == nil) || (!state && b.ch.OnMessage == nil) {
		return
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

// message is one queued broadcast.
type message []byte

func (m message) Invalidates(memberlist.Broadcast) bool { return false }
func (m message) Message() []byte                       { return m }
func (m message) Finished()                             {}

// ErrEmptyMessage: Broadcast was given no bytes.
var ErrEmptyMessage = errors.New("discovery: empty message")

// Broadcast sends msg to every other member: by gossip when it fits in
// MaxGossipMessage bytes (it reaches members in a few gossip rounds, even
// those this node cannot reach directly), else over TCP to each alive
// member, which may take up to Timing.TCPTimeout per unreachable one.
// Members that are away get it only through the Channel's State on
// push/pull. Broadcast returns without waiting for gossip.
func (f *Fleet) Broadcast(msg []byte) error {
	if len(msg) == 0 {
		return ErrEmptyMessage
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed {
		return errClosed
	}
	if len(msg) <= MaxGossipMessage {
		f.del.bc.queue.QueueBroadcast(message(bytes.Clone(msg)))
		return nil
	}
	self := f.ml.LocalNode().Name
	var errs []error
	for _, n := range f.ml.Members() {
		if n.Name == self {
			continue
		}
		if err := f.ml.SendReliable(n, msg); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
	}
	if len(errs) > 0 {
		f.log.Debug("broadcast not delivered to every member", "err", errors.Join(errs...))
	}
	return nil
}
