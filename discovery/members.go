package discovery

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// State is a member's liveness as this node sees it.
type State string

// Member states.
const (
	// StateAlive: the member answers.
	StateAlive State = "alive"
	// StateSuspect: the fleet still counts the member alive, but this node
	// has heard nothing from it directly (join, update, probe ack) for
	// several probe rounds. memberlist v0.7.0 does not expose its own
	// suspicion state (hashicorp/memberlist#266), so this is our view.
	StateSuspect State = "suspect"
	// StateDead: the fleet declared the member failed.
	StateDead State = "dead"
	// StateLeft: the member left on purpose (Close).
	StateLeft State = "left"
)

// States lists every State, in display order.
var States = []State{StateAlive, StateSuspect, StateDead, StateLeft}

// Member is one node of the fleet as this node sees it.
type Member struct {
	Name     string
	Addr     string // gossip host:port
	State    State
	LastSeen time.Time // when this node last heard from it
	Meta     Meta
	Self     bool
}

// record is what the fleet keeps per member. gone is set when the member
// turned dead or left: it is dropped Retention after that.
type record struct {
	m       Member
	leaving bool // its last meta said it is leaving: a leave is "left"
	gone    time.Time
}

// roster holds the members. Its methods run under memberlist's own lock
// (event delegates), so they only touch roster state and never call back
// into memberlist.
type roster struct {
	self      string
	retention time.Duration
	notify    func(name string) // queue an OnChange; never blocks
	onLeave   func(Member)      // log hook
	now       func() time.Time

	mu      sync.Mutex
	members map[string]*record
}

func newRoster(self string, retention time.Duration, notify func(string), onLeave func(Member)) *roster {
	return &roster{self: self, retention: retention, notify: notify, onLeave: onLeave,
		now: time.Now, members: make(map[string]*record)}
}

// NotifyJoin implements memberlist.EventDelegate.
func (r *roster) NotifyJoin(n *memberlist.Node) { r.alive(n) }

// NotifyUpdate implements memberlist.EventDelegate.
func (r *roster) NotifyUpdate(n *memberlist.Node) { r.alive(n) }

func (r *roster) alive(n *memberlist.Node) {
	meta, leaving, _ := decodeMeta(n.Meta) // undecodable meta is refused by NotifyAlive
	r.mu.Lock()
	rec, ok := r.members[n.Name]
	if !ok {
		rec = &record{}
		r.members[n.Name] = rec
	}
	changed := !ok || rec.m.State != StateAlive || !rec.m.Meta.Equal(meta) || rec.m.Addr != n.Address()
	rec.m = Member{Name: n.Name, Addr: n.Address(), State: StateAlive, LastSeen: r.now(),
		Meta: meta, Self: n.Name == r.self}
	rec.leaving, rec.gone = leaving, time.Time{}
	r.mu.Unlock()
	if changed && !leaving && n.Name != r.self {
		r.notify(n.Name)
	}
}

// NotifyLeave implements memberlist.EventDelegate: the member failed or left.
func (r *roster) NotifyLeave(n *memberlist.Node) {
	r.mu.Lock()
	rec, ok := r.members[n.Name]
	if !ok {
		r.mu.Unlock()
		return
	}
	rec.m.State = StateDead
	if rec.leaving {
		rec.m.State = StateLeft
	}
	rec.gone = r.now()
	m := rec.m
	r.mu.Unlock()
	if n.Name != r.self { // our own leave, on Close, is no news to log
		r.onLeave(m)
		r.notify(n.Name)
	}
}

// NotifyAlive implements memberlist.AliveDelegate: nodes whose meta is not
// imgmesh meta are refused, so a foreign memberlist cluster never merges in.
func (r *roster) NotifyAlive(n *memberlist.Node) error {
	_, _, err := decodeMeta(n.Meta)
	return err
}

// AckPayload implements memberlist.PingDelegate.
func (r *roster) AckPayload() []byte { return nil }

// NotifyPingComplete implements memberlist.PingDelegate: a direct probe of
// the member was answered.
func (r *roster) NotifyPingComplete(n *memberlist.Node, _ time.Duration, _ []byte) {
	r.mu.Lock()
	if rec, ok := r.members[n.Name]; ok && rec.m.State == StateAlive {
		rec.m.LastSeen = r.now()
	}
	r.mu.Unlock()
}

// list returns the members, sorted by name, after dropping those gone for
// longer than the retention. An alive member not heard from for longer
// than suspectAfter (times the number of alive members: one probe round
// visits each once) is reported as suspect.
func (r *roster) list(suspectAfter time.Duration) []Member {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	alive := 0
	for name, rec := range r.members {
		if !rec.gone.IsZero() && now.Sub(rec.gone) > r.retention {
			delete(r.members, name)
			continue
		}
		if rec.gone.IsZero() {
			alive++
		}
	}
	limit := suspectAfter * time.Duration(max(alive, 1))
	out := make([]Member, 0, len(r.members))
	for _, rec := range r.members {
		m := rec.m
		m.Meta = m.Meta.clone()
		if m.Self {
			m.LastSeen = now
		} else if m.State == StateAlive && now.Sub(m.LastSeen) > limit {
			m.State = StateSuspect
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// get returns one member (for OnChange), or false if it is not known.
func (r *roster) get(name string, suspectAfter time.Duration) (Member, bool) {
	for _, m := range r.list(suspectAfter) {
		if m.Name == name {
			return m, true
		}
	}
	return Member{}, false
}

// notifier delivers OnChange calls on its own goroutine. Pending changes are
// a set of names, so the queue is bounded by the fleet size and the callback
// sees each member's latest state (rapid changes are coalesced).
type notifier struct {
	fn   func(name string)
	mu   sync.Mutex
	todo []string
	set  map[string]bool
	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newNotifier(fn func(name string)) *notifier {
	n := &notifier{fn: fn, set: make(map[string]bool), wake: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	return n
}

// start begins delivery; changes queued before are delivered then.
func (n *notifier) start() { go n.run() }

// add queues name; it never blocks.
func (n *notifier) add(name string) {
	n.mu.Lock()
	if !n.set[name] {
		n.set[name] = true
		n.todo = append(n.todo, name)
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.stop:
			return
		case <-n.wake:
		}
		n.mu.Lock()
		todo := n.todo
		n.todo, n.set = nil, make(map[string]bool)
		n.mu.Unlock()
		for _, name := range todo {
			select {
			case <-n.stop:
				return
			default:
			}
			n.fn(name)
		}
	}
}

// close stops delivery and waits for a running callback to return. It must
// follow start.
func (n *notifier) close() {
	close(n.stop)
	<-n.done
}
