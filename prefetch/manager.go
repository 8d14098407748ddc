package prefetch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/node"
)

// Puller pulls a whole image; *node.Node implements it.
type Puller interface {
	PullImage(ctx context.Context, name node.Name, ref string, opts node.PullOptions) (digest.Digest, error)
}

// Pinner keeps an image (a manifest or index digest and what it references)
// from eviction; the node's store implements it.
type Pinner interface {
	Pin(ctx context.Context, d digest.Digest) error
}

// Member is a fleet member as the order status needs it.
type Member struct {
	Name   string
	Labels map[string]string
	Alive  bool
}

// Options configure a Manager.
type Options struct {
	// Path is the file orders and reports are kept in (DATA/prefetch.json);
	// "" keeps them in memory only.
	Path   string
	Logger *slog.Logger
	// Retention: an order and its reports are dropped this long after its
	// deadline (default 24h).
	Retention time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a failed
	// pull (defaults 5s and 2m).
	RetryMin, RetryMax time.Duration
	// ReportInterval is the most often progress of one order is gossiped
	// (default 1s); state changes go out at once.
	ReportInterval time.Duration
	// Now is the clock (tests).
	Now func() time.Time
}

// Runtime is what a Manager needs to carry out orders; see Start.
type Runtime struct {
	Self   string            // this member's name in the fleet
	Labels map[string]string // this member's labels
	Puller Puller
	Pinner Pinner // nil: images are not pinned (logged once)
	// Broadcast gossips msg to the fleet; a message still queued under the
	// same name (if not "") is replaced. nil: a lone node.
	Broadcast func(name string, msg []byte) error
	// SendTo sends msg to one member directly (not by gossip); nil: only
	// Broadcast. A final report also goes this way to the member that
	// accepted the order, which `imgmesh prefetch` is watching.
	SendTo func(member string, msg []byte) error
	// Members lists the fleet; nil: this node alone.
	Members func() []Member
	// DefaultRegistry is the registry a reference without one means (the
	// node's first upstream), for Docker Hub's library/ names.
	DefaultRegistry string
}

// Manager keeps the orders and reports of one node and carries out the
// orders that select it.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	t       *table
	loaded  map[[2]string]bool // (order, member) of reports read from the file
	rt      *Runtime           // nil until Start
	clock   int64              // largest version seen for this member's reports
	dirty   map[string]bool    // orders whose own report has unsent progress
	unsaved bool               // orders or report states changed since the file was written (progress alone is not kept)
	closed  bool               // Close ran: gossip that still arrives is kept, not answered

	saveMu sync.Mutex // one file write at a time, in order

	wake   chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New loads the file at opts.Path (a missing file is an empty state; an
// unreadable one is set aside as .bad and logged).
func New(opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Retention <= 0 {
		opts.Retention = 24 * time.Hour
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 5 * time.Second
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = max(2*time.Minute, opts.RetryMin)
	}
	if opts.ReportInterval <= 0 {
		opts.ReportInterval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Manager{opts: opts, log: opts.Logger.With("component", "prefetch"), t: newTable(opts.Retention),
		loaded: map[[2]string]bool{}, dirty: map[string]bool{}, wake: make(chan struct{}, 1)}
	s, err := m.load()
	if err != nil {
		return nil, err
	}
	now := opts.Now()
	for _, o := range s.Orders {
		if _, err := m.t.addOrder(o, now); err != nil {
			m.log.Warn("order in the state file dropped", "order", o.ID, "err", err)
		}
	}
	for _, r := range s.Reports {
		if ok, _ := m.t.addReport(r); ok {
			m.loaded[[2]string{r.Order, r.Member}] = true
		}
	}
	m.t.expire(now)
	return m, nil
}

// Start carries out orders from now on: the ones this member's labels
// match, now and as they arrive, resuming any it was pulling when it
// stopped. Close stops it.
func (m *Manager) Start(rt Runtime) error {
	if rt.Self == "" || rt.Puller == nil {
		return errors.New("prefetch: Start needs a member name and a puller")
	}
	if rt.Pinner == nil {
		m.log.Info("the store cannot pin: prefetched images are not protected from eviction")
	}
	rt.Labels = maps.Clone(rt.Labels)
	m.mu.Lock()
	if m.rt != nil {
		m.mu.Unlock()
		return errors.New("prefetch: started twice")
	}
	m.rt = &rt
	for id, byMember := range m.t.reports {
		if r, ok := byMember[rt.Self]; ok {
			m.clock = max(m.clock, r.Version)
			if !m.loaded[[2]string{id, rt.Self}] { // said about us by others: we decide
				delete(byMember, rt.Self)
			}
		}
	}
	for _, o := range m.t.orders {
		m.markPendingLocked(o)
	}
	m.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	m.wg.Add(2)
	go func() { defer m.wg.Done(); m.execute(ctx) }()
	go func() { defer m.wg.Done(); m.flushLoop(ctx) }()
	m.kick()
	return nil
}

// Close stops carrying out orders (a pull in progress resumes after a
// restart) and writes the state file.
func (m *Manager) Close() error {
	if m.cancel != nil {
		m.cancel()
	}
	m.wg.Wait()
	m.mu.Lock()
	m.closed = true // the fleet goes next: nothing more is sent into it
	m.mu.Unlock()
	return m.save()
}

// Create validates r, keeps the order (written to the file before it
// returns), gossips it and starts it here if it selects this member.
func (m *Manager) Create(ctx context.Context, r Request) (Order, error) {
	m.mu.Lock()
	rt := m.rt
	m.mu.Unlock()
	if rt == nil {
		return Order{}, errors.New("prefetch: not started")
	}
	members := fleetOf(rt) // not under m.mu: the fleet calls into m too
	m.mu.Lock()
	o, err := newOrder(r, rt.Self, members, m.opts.Now())
	if err == nil {
		_, err = m.t.addOrder(o, m.opts.Now())
	}
	if err != nil {
		m.mu.Unlock()
		return Order{}, err
	}
	m.unsaved = true
	own := m.markPendingLocked(o)
	m.mu.Unlock()

	if err := m.save(); err != nil {
		return Order{}, fmt.Errorf("keep order: %w", err)
	}
	m.send(message{Order: &o})
	if own != nil {
		m.send(message{Report: own})
	}
	m.kick()
	m.log.Info("prefetch order created", "order", o.ID, "refs", o.Refs, "selector", o.Selector,
		"platforms", o.Platforms, "deadline", o.Deadline)
	return o, nil
}

// MemberStatus is one selected member and its report (nil: none yet).
type MemberStatus struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Report *Report           `json:"report,omitempty"`
	// Unreachable: the fleet no longer sees it alive (suspect, dead or
	// gone), after it reported on the order or was expected to.
	Unreachable bool `json:"unreachable,omitempty"`
	// Gone: the fleet has forgotten it (dead or left for longer than the
	// fleet keeps such members): it will not finish the order.
	Gone bool `json:"gone,omitempty"`
}

// Status is an order and the members it selects: alive members whose
// labels match, and those that were expected (alive when the order was
// accepted) or reported on it and are no longer alive (a device that
// dropped out before it finished is not done), with their reports.
type Status struct {
	Order   Order          `json:"order"`
	Members []MemberStatus `json:"members"`
}

// Status returns order id as this node knows it.
func (m *Manager) Status(ctx context.Context, id string) (Status, error) {
	m.mu.Lock()
	o, ok := m.t.orders[id]
	rt := m.rt
	m.mu.Unlock()
	if !ok {
		return Status{}, fmt.Errorf("order %q: %w", id, ErrUnknownOrder)
	}
	members := fleetOf(rt)
	st := Status{Order: o, Members: []MemberStatus{}}
	m.mu.Lock()
	defer m.mu.Unlock()
	listed := map[string]bool{}
	for _, mem := range members {
		listed[mem.Name] = true // selected or not: the fleet knows it
		if !o.Selects(mem.Labels) {
			continue
		}
		r, reported := m.t.report(id, mem.Name)
		if !mem.Alive && !reported && !slices.Contains(o.Expected, mem.Name) {
			continue // never took part
		}
		ms := MemberStatus{Name: mem.Name, Labels: mem.Labels, Unreachable: !mem.Alive}
		if reported {
			ms.Report = &r
		}
		st.Members = append(st.Members, ms)
	}
	// Members the fleet has forgotten: expected ones, and any that
	// reported (a late joiner), are still part of the order's outcome.
	gone := slices.Clone(o.Expected)
	for name := range m.t.reports[id] {
		gone = append(gone, name)
	}
	for _, name := range gone {
		if listed[name] {
			continue
		}
		listed[name] = true
		ms := MemberStatus{Name: name, Unreachable: true, Gone: true}
		if r, ok := m.t.report(id, name); ok {
			ms.Report = &r
		}
		st.Members = append(st.Members, ms)
	}
	slices.SortFunc(st.Members, func(a, b MemberStatus) int { return cmp.Compare(a.Name, b.Name) })
	return st, nil
}

// fleetOf lists the fleet as rt sees it (this node alone without one).
func fleetOf(rt *Runtime) []Member {
	switch {
	case rt == nil:
		return nil
	case rt.Members != nil:
		return rt.Members()
	default:
		return []Member{{Name: rt.Self, Labels: rt.Labels, Alive: true}}
	}
}

// expected names the alive members o selects, sorted.
func expected(o Order, members []Member) []string {
	var out []string
	for _, mem := range members {
		if mem.Alive && o.Selects(mem.Labels) {
			out = append(out, mem.Name)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// markPendingLocked gives this member a pending report of o when o selects
// it, is still running, and it has none yet. It returns the new report.
func (m *Manager) markPendingLocked(o Order) *Report {
	if m.rt == nil || !o.Selects(m.rt.Labels) || !m.opts.Now().Before(o.Deadline) {
		return nil
	}
	if _, ok := m.t.report(o.ID, m.rt.Self); ok {
		return nil
	}
	r := m.setOwnLocked(o.ID, func(r *Report) { r.State = Pending })
	return &r
}

// setOwnLocked applies update to this member's report of order id, with a
// new version, and returns it.
func (m *Manager) setOwnLocked(id string, update func(*Report)) Report {
	now := m.opts.Now()
	r, ok := m.t.report(id, m.rt.Self)
	if !ok {
		r = Report{Order: id, Member: m.rt.Self}
	}
	prev := r.State
	update(&r)
	r.Updated = now.UTC()
	r.Version = versionAfter(m.clock, now)
	m.clock = r.Version
	if _, err := m.t.addReport(r); err != nil {
		m.log.Error("own report refused", "order", id, "err", err)
	}
	if !ok || r.State != prev {
		m.unsaved = true
	}
	return r
}

// kick wakes the executor.
func (m *Manager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}
