package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/piece"
)

const (
	// requestsPerSource is how many pieces one source is asked for at a
	// time: one in transfer while the next request crosses the LAN.
	requestsPerSource = 2
	// pollWait is how long a holder may hold a piece-state poll open.
	pollWait = time.Second
	// pollEvery spaces the polls of one source (three pieces' time at
	// 100 Mbit/s).
	pollEvery = 250 * time.Millisecond
	// relookupEvery spaces the lookups for new holders while a blob swarms.
	relookupEvery = 500 * time.Millisecond
	// swarmHolders is how many holders one lookup asks for.
	swarmHolders = 16
	// maxStrikes: a source whose piece requests failed this many times in
	// a row is dropped.
	maxStrikes = 3
	// notHeldRetry spaces asking a member that does not have the blob yet.
	notHeldRetry = 250 * time.Millisecond
)

// peerSrc is one fleet member the swarm takes pieces from.
type peerSrc struct {
	id, url string
	// member: a fleet member asked whether it has the blob at all; "not
	// held" means not yet, and it is asked again.
	member   bool
	answered chan struct{} // closed at its first answer
	kick     chan struct{} // wakes a poll waiting after "not held"
	failing  bool          // its last poll failed (under mu)
	once     sync.Once

	mu       sync.Mutex
	have     piece.Set
	complete bool
	pending  map[int]bool // pieces asked of this source
	gone     bool
	workers  bool
}

func (p *peerSrc) answer() { p.once.Do(func() { close(p.answered) }) }

func (p *peerSrc) holds(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.gone && p.have.Has(i)
}

// swarmRun is one download in a fleet: pieces from every holder at once,
// and from upstream only when this node is the one the fleet fetches
// through.
type swarmRun struct {
	n    *Node
	dl   *download
	sw   *swarm
	name Name
	what string

	mu         sync.Mutex
	srcs       map[string]*peerSrc
	failed     map[string]bool // members whose data plane failed us
	used       []string        // peers whose pieces went in
	upStarted  bool
	upErr      error // why upstream could not deliver
	errs       []sourceErr
	announced  bool
	lastChoose time.Time
	grew       time.Time // when a source last reported more pieces

	// ctx is the download's: a fleet member's request to fetch from
	// upstream starts the upstream fetcher under it.
	ctx context.Context
	wg  sync.WaitGroup
}

var piecePool = sync.Pool{New: func() any { b := make([]byte, piece.Size); return &b }}

// fetchSwarm fetches dl's blob piece by piece from holders in the fleet
// (complete or still downloading), and from upstream when this node is the
// fleet's fetcher for it. Pieces are verified against their hashes before
// they are served on, the whole blob against its digest before commit.
func (n *Node) fetchSwarm(ctx context.Context, dl *download, w blobstore.Writer, name Name) error {
	ctx, cancel := context.WithCancel(ctx)
	r := &swarmRun{n: n, dl: dl, sw: dl.sw, name: name, srcs: map[string]*peerSrc{}, failed: map[string]bool{},
		what: fmt.Sprintf("blob %s@%s", name.Repo, dl.d), ctx: ctx}
	defer r.wg.Wait()
	defer cancel()
	dl.setRun(r)

	// Ask the members and the DHT at once, within one lookup budget.
	budget := time.Now().Add(n.opts.LookupTimeout)
	asked := r.askMembers(ctx)
	found := false
	for _, h := range n.holders(ctx, dl.d.String(), swarmHolders) {
		found = r.addSource(ctx, h.ID, h.DataURL, false) || found
	}
	switch {
	case r.sw.isOrigin():
		r.ensureUpstream(ctx)
	case !found && !r.firstAnswers(ctx, asked, budget):
		r.chooseFetcher(ctx) // nobody in the fleet has a piece of it yet
	}
	r.wg.Add(1)
	go r.discover(ctx)

	sizeSet := false
	for !r.sw.complete() {
		if !sizeSet {
			if size := r.sw.knownSize(); size >= 0 {
				dl.setSize(size, r.firstKind())
				sizeSet = true
			}
		}
		if data, ok := r.sw.next(); ok {
			if _, err := w.Write(data); err != nil {
				return err
			}
			r.sw.written()
			dl.advance(w.Size())
			full := data[:cap(data)]
			piecePool.Put(&full)
			continue
		}
		if err := r.stuck(ctx); err != nil {
			return err
		}
		r.sw.wait(ctx, 250*time.Millisecond)
	}
	r.mu.Lock()
	used := append([]string(nil), r.used...)
	r.mu.Unlock()
	return n.commitDownload(ctx, dl, w, r.sw.knownSize(), used, r.what)
}

// stuck decides what to do when no piece is ready: give up, or find a
// fetcher when the swarm stalled.
func (r *swarmRun) stuck(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", r.what, err)
	}
	idle := r.sw.sinceProgress()
	r.mu.Lock()
	upDead := r.upErr != nil
	upRunning := r.upStarted && !upDead
	r.mu.Unlock()
	live := r.sourceCount()
	if idle > r.n.opts.IdleTimeout {
		return fmt.Errorf("%s: no piece arrived for %s: %w", r.what, idle.Round(time.Second), r.cause())
	}
	if live == 0 && !upRunning {
		if upDead {
			return r.cause()
		}
		if r.canChoose() && r.chooseFetcher(ctx) == "" {
			return r.cause() // nobody holds it and nobody can fetch it
		}
		return nil
	}
	// Nobody holds what we lack, no piece came for a while, and no source
	// gained a piece either (a slow fetcher still adds pieces): the fetcher
	// may be gone. Rank again and ask (or become) the next one.
	if !upRunning && idle > r.n.opts.StallTimeout && r.sinceGrowth() > r.n.opts.StallTimeout &&
		!r.available() && r.canChoose() {
		r.chooseFetcher(ctx)
	}
	return nil
}

func (r *swarmRun) sinceGrowth() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Since(r.grew)
}

func (r *swarmRun) canChoose() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return time.Since(r.lastChoose) > r.n.opts.StallTimeout
}

// cause is the error a client sees when no source could deliver.
func (r *swarmRun) cause() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	errs := append([]sourceErr(nil), r.errs...)
	if r.upErr != nil {
		errs = append(errs, sourceErr{-1, "upstream", r.upErr})
	}
	return classify(r.what, errs)
}

// chooseFetcher ranks the live members for this blob and asks the first
// that answers to fetch it from upstream (this node, when it ranks first).
// It returns the chosen member's ID, or "" if none could.
func (r *swarmRun) chooseFetcher(ctx context.Context) string {
	if r.sw.isOrigin() {
		r.ensureUpstream(ctx) // the fleet asked this node: it never hands the blob on
		return "self"
	}
	r.mu.Lock()
	r.lastChoose = time.Now()
	r.mu.Unlock()
	members := []Member{{Self: true}}
	if r.n.members != nil {
		members = r.n.members.Members()
	}
	ns := r.name.NS
	if r.n.up != nil {
		if reg, err := r.n.up.Resolve(ns); err == nil {
			ns = reg.Name
		}
	}
	for _, m := range rank(r.dl.d, members) {
		r.n.log.Debug("swarm: choose fetcher", "digest", r.dl.d, "member", m.ID, "self", m.Self)
		if m.Self {
			if r.n.mirrors(r.name) {
				r.sw.becomeOrigin()
				r.ensureUpstream(ctx)
				return "self"
			}
			continue
		}
		r.mu.Lock()
		skip := r.failed[m.ID] || m.DataURL == ""
		r.mu.Unlock()
		if skip || r.n.bad.has(r.dl.d, m.ID) || !r.responsive(m.ID) {
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, r.n.opts.UpstreamHedgeDelay+time.Second)
		err := r.n.peers.Fetch(fctx, m.DataURL, r.dl.d, ns, r.name.Repo)
		cancel()
		if err != nil {
			r.n.log.Debug("swarm: member could not fetch for the fleet", "digest", r.dl.d, "member", m.ID, "err", err)
			r.fail(m.ID, "peer", err)
			continue
		}
		r.addSource(ctx, m.ID, m.DataURL, false)
		r.wake(m.ID)
		return m.ID
	}
	return ""
}

// discover looks for new holders while the blob swarms: nodes that started
// downloading after us announce their first pieces.
func (r *swarmRun) discover(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(relookupEvery)
	defer t.Stop()
	for !r.sw.complete() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, h := range r.n.holders(ctx, r.dl.d.String(), swarmHolders) {
			r.addSource(ctx, h.ID, h.DataURL, false)
		}
	}
}

// addSource starts polling a holder's piece state (and asking it for
// pieces once it has some), unless it is known or failed us. member: the
// node is asked because it is in the fleet, not because it announced the
// blob. It reports whether the source is new.
func (r *swarmRun) addSource(ctx context.Context, id, url string, member bool) bool {
	if url == "" || r.n.bad.has(r.dl.d, id) {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if src := r.srcs[id]; (src != nil && !src.isGone()) || r.failed[id] {
		return false
	}
	src := &peerSrc{id: id, url: url, member: member, answered: make(chan struct{}), kick: make(chan struct{}, 1), pending: map[int]bool{}}
	r.srcs[id] = src
	r.wg.Add(1)
	go r.poll(ctx, src)
	return true
}

// askMembers polls every live fleet member for the blob: in a plant-sized
// fleet, asking everyone finds partial holders at once, where a DHT lookup
// is bounded by its budget and sees only announced holders.
func (r *swarmRun) askMembers(ctx context.Context) []*peerSrc {
	if r.n.members == nil {
		return nil
	}
	var asked []*peerSrc
	for _, m := range r.n.members.Members() {
		if m.Self || m.DataURL == "" {
			continue
		}
		if r.addSource(ctx, m.ID, m.DataURL, true) {
			r.mu.Lock()
			asked = append(asked, r.srcs[m.ID])
			r.mu.Unlock()
		}
	}
	return asked
}

// firstAnswers waits until every asked member answered once, or the
// lookup budget ends, and reports whether someone in the fleet has the blob.
func (r *swarmRun) firstAnswers(ctx context.Context, asked []*peerSrc, budget time.Time) bool {
	t := time.NewTimer(time.Until(budget))
	defer t.Stop()
	for _, src := range asked {
		select {
		case <-src.answered:
		case <-t.C:
			return r.sw.knownSize() >= 0
		case <-ctx.Done():
			return false
		}
	}
	return r.sw.knownSize() >= 0
}

// responsive reports whether member id answered a poll, if it was asked:
// a member that did not answer within the budget (stopped, overloaded) is
// not asked to fetch for the fleet.
func (r *swarmRun) responsive(id string) bool {
	r.mu.Lock()
	src := r.srcs[id]
	r.mu.Unlock()
	if src == nil {
		return true
	}
	select {
	case <-src.answered:
		src.mu.Lock()
		defer src.mu.Unlock()
		return !src.gone && !src.failing
	default:
		return false
	}
}

// wake makes a member's poll ask again now (it was just asked to fetch).
func (r *swarmRun) wake(id string) {
	r.mu.Lock()
	src := r.srcs[id]
	r.mu.Unlock()
	if src != nil {
		select {
		case src.kick <- struct{}{}:
		default:
		}
	}
}

func (r *swarmRun) sourceCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.srcs {
		if !s.isGone() {
			n++
		}
	}
	return n
}

func (r *swarmRun) live() []*peerSrc {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*peerSrc, 0, len(r.srcs))
	for _, s := range r.srcs {
		out = append(out, s)
	}
	return out
}

// rarity counts the live sources holding piece i.
func (r *swarmRun) rarity(i int) int {
	n := 0
	for _, s := range r.live() {
		if s.holds(i) {
			n++
		}
	}
	return n
}

func (r *swarmRun) heldElsewhere(i int) bool { return r.rarity(i) > 0 }

// available reports whether some live source holds a piece we lack.
func (r *swarmRun) available() bool {
	r.sw.mu.Lock()
	var lack []int
	for i := r.sw.frontier; i < r.sw.count; i++ {
		if !r.sw.have.Has(i) {
			lack = append(lack, i)
		}
	}
	r.sw.mu.Unlock()
	for _, i := range lack {
		if r.heldElsewhere(i) {
			return true
		}
	}
	return false
}

// drop stops using a source.
func (r *swarmRun) drop(src *peerSrc, err error) {
	src.mu.Lock()
	already := src.gone
	src.gone = true
	src.mu.Unlock()
	if !already {
		r.fail(src.id, "peer", err)
		r.n.log.Debug("swarm source dropped", "digest", r.dl.d, "peer", src.id, "err", err)
		r.sw.poke()
	}
}

func (r *swarmRun) fail(id, kind string, err error) {
	r.mu.Lock()
	r.failed[id] = true
	r.errs = append(r.errs, sourceErr{-1, kind, fmt.Errorf("%s: %w", id, err)})
	r.mu.Unlock()
	r.n.m.fetches.WithLabelValues(kind, "error").Inc()
}

func (r *swarmRun) firstKind() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.used) > 0 || !r.upStarted {
		return "peer"
	}
	return "upstream"
}

// gotPiece notes a new verified piece: the first one makes this node a
// holder the fleet can find.
func (r *swarmRun) gotPiece(kind, from string, size int) {
	r.n.m.fetchedBytes.WithLabelValues(kind).Add(float64(size))
	r.mu.Lock()
	first := !r.announced
	r.announced = true
	if kind == "peer" && (len(r.used) == 0 || r.used[len(r.used)-1] != from) {
		r.used = append(r.used, from)
	}
	r.mu.Unlock()
	if first {
		r.n.announce(r.dl.d)
	}
}

// poll long-polls a source's piece state and keeps its workers going.
func (r *swarmRun) poll(ctx context.Context, src *peerSrc) {
	defer r.wg.Done()
	defer src.answer()
	after, strikes := -1, 0
	var last time.Time
	for ctx.Err() == nil && !r.sw.complete() {
		// A growing holder answers at each new piece: ask at most every
		// pollEvery, so a poll brings a few pieces' news, not one.
		if wait := pollEvery - time.Since(last); wait > 0 && !sleep(ctx, wait) {
			return
		}
		last = time.Now()
		st, err := r.n.peers.Pieces(ctx, src.url, r.dl.d, r.sw.firstUnknown(), after, pollWait)
		if src.member && errors.Is(err, errNotHeld) {
			src.answer() // not yet: it may start the blob later
			select {
			case <-ctx.Done():
				return
			case <-src.kick:
			case <-time.After(notHeldRetry):
			}
			last = time.Time{} // it had nothing: ask again at once
			continue
		}
		src.mu.Lock()
		src.failing = err != nil && !errors.Is(err, errBusyPeer) && !errors.Is(err, errNotHeld)
		src.mu.Unlock()
		if err != nil {
			src.answer() // an error is an answer too: a dead member costs no wait
		}
		if errors.Is(err, errBusyPeer) || (err != nil && !errors.Is(err, errNotHeld) && strikes < maxStrikes-1) {
			// Busy, or a hiccup (a slow dial on a loaded host): ask again.
			if !errors.Is(err, errBusyPeer) {
				strikes++
			}
			if !sleep(ctx, 50*time.Millisecond) {
				return
			}
			continue
		}
		if err == nil {
			strikes = 0
			if err = r.sw.setSize(st.Size); err == nil {
				err = r.sw.learn(st.From, st.Hashes)
			}
			if err != nil {
				r.n.bad.add(r.dl.d, []string{src.id}) // it lied about the blob
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				r.drop(src, err)
			}
			return
		}
		src.answer()
		src.mu.Lock()
		src.have, src.complete = st.Have, st.Complete
		start := !src.workers && st.Have.Len() > 0
		src.workers = src.workers || start
		gone := src.gone
		src.mu.Unlock()
		if gone {
			return
		}
		if start {
			for range requestsPerSource {
				r.wg.Add(1)
				go r.work(ctx, src)
			}
		}
		if st.Have.Len() > after && after >= 0 {
			r.mu.Lock()
			r.grew = time.Now()
			r.mu.Unlock()
		}
		r.sw.poke()
		after = st.Have.Len()
		if st.Complete {
			if r.sw.firstUnknown() >= r.sw.pieceCount() {
				return // it has everything and we know every hash: nothing more to learn
			}
			// Its hashes are still being computed: ask again shortly.
			if !sleep(ctx, 50*time.Millisecond) {
				return
			}
		}
	}
}

// work asks one source for pieces, one at a time.
func (r *swarmRun) work(ctx context.Context, src *peerSrc) {
	defer r.wg.Done()
	busy, strikes := 0, 0
	for ctx.Err() == nil && !r.sw.complete() {
		src.mu.Lock()
		gone, has := src.gone, src.have
		src.mu.Unlock()
		if gone {
			return
		}
		i := r.sw.claim(has, src.isPending, r.rarity)
		if i < 0 {
			r.sw.wait(ctx, 200*time.Millisecond)
			continue
		}
		src.setPending(i, true)
		data, err := r.fetchPiece(ctx, src, i)
		src.setPending(i, false)
		if errors.Is(err, errBusyPeer) {
			r.sw.release(i)
			busy++
			// Its upload slots are taken: other workers ask other sources;
			// this one backs off (20 ms doubling to 320 ms, jittered) rather
			// than flood a busy peer with requests it must refuse.
			backoff := 20 * time.Millisecond << min(busy-1, 4)
			if !sleep(ctx, backoff/2+rand.N(backoff/2)) {
				return
			}
			continue
		}
		busy = 0
		if err != nil {
			r.sw.release(i)
			if ctx.Err() != nil {
				return
			}
			// A piece can fail once in a race with the holder's commit or a
			// busy socket; a source that keeps failing is gone.
			if strikes++; strikes >= maxStrikes {
				r.drop(src, err)
				return
			}
			if !sleep(ctx, 20*time.Millisecond) {
				return
			}
			continue
		}
		strikes = 0
		fresh, err := r.sw.deliver(i, *data, false)
		if err != nil {
			piecePool.Put(data)
			r.n.bad.add(r.dl.d, []string{src.id}) // the next fetch skips it too
			r.drop(src, err)
			return
		}
		if fresh {
			r.gotPiece("peer", src.id, len(*data))
		} else {
			piecePool.Put(data)
		}
	}
}

func (p *peerSrc) isGone() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gone
}

func (p *peerSrc) isPending(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pending[i]
}

func (p *peerSrc) setPending(i int, on bool) {
	p.mu.Lock()
	if on {
		p.pending[i] = true
	} else {
		delete(p.pending, i)
	}
	p.mu.Unlock()
}

// fetchPiece reads piece i from a source into a pooled buffer.
func (r *swarmRun) fetchPiece(ctx context.Context, src *peerSrc, i int) (*[]byte, error) {
	off, end := piece.Bounds(i, r.sw.knownSize())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	body, err := r.n.peers.Range(ctx, src.url, r.dl.d, off, end)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	buf := piecePool.Get().(*[]byte)
	data := (*buf)[:end-off]
	idle := idleReader(body, r.n.opts.IdleTimeout, cancel)
	defer idle.stop()
	if _, err := io.ReadFull(r.n.throttled(ctx, idle), data); err != nil {
		piecePool.Put(buf)
		return nil, err
	}
	out := data
	return &out, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
