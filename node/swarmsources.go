package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/internal/piece"
)

// The swarm's sources: fleet members and holders whose piece maps a
// download polls, and the workers that ask each of them for pieces.

// peerSrc is one fleet member the swarm takes pieces from.
type peerSrc struct {
	id, url string
	// member: a fleet member asked whether it has the blob at all; "not
	// held" means not yet, and it is asked again.
	member   bool
	answered chan struct{} // closed at its first answer
	added    time.Time     // when this download started polling it
	kick     chan struct{} // wakes a poll waiting after "not held"
	once     sync.Once

	mu       sync.Mutex
	have     piece.Set
	complete bool
	asked    piece.Set    // pieces it is receiving now
	fetching bool         // it said it fetches from upstream for the fleet
	heard    time.Time    // its last answer with the blob's state
	pending  map[int]bool // pieces asked of this source
	// refused: pieces this seed just sent to another member, and until
	// when not to ask it for them (they spread from that member).
	refused map[int]time.Time
	gone    bool
	workers bool
}

func (p *peerSrc) answer() { p.once.Do(func() { close(p.answered) }) }

// hadTime reports whether the source has been asked long enough that no
// answer means it is quiet: one asked again a moment ago (it rejoined
// after a failure) may still be answering its first poll.
func (p *peerSrc) hadTime() bool { return time.Since(p.added) >= fetcherWait }

func (p *peerSrc) holds(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.gone && p.have.Has(i)
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
	if src := r.srcs[id]; src != nil && !src.isGone() {
		return false
	}
	if when, ok := r.failed[id]; ok && time.Since(when) < rejoinAfter {
		return false
	}
	src := &peerSrc{id: id, url: url, member: member, answered: make(chan struct{}), kick: make(chan struct{}, 1), pending: map[int]bool{}, added: time.Now()}
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
	r.awaitAnswers(ctx, asked, budget, false)
	return r.sw.knownSize() >= 0
}

// heldInFleet waits, until deadline, for the first answer of every member
// asked, and reports whether a live source has pieces this node lacks:
// before this node fetches from upstream for the fleet, a loaded holder
// that answered late has its say. Members silent until then are quiet.
func (r *swarmRun) heldInFleet(ctx context.Context, deadline time.Time) bool {
	var members []*peerSrc
	for _, src := range r.live() {
		if src.member {
			members = append(members, src)
		}
	}
	r.awaitAnswers(ctx, members, deadline, true)
	return r.available()
}

// awaitAnswers waits until each of srcs answered its first poll, or
// deadline, skipping members known to be quiet; with markQuiet, those that
// did not answer in time are remembered as quiet.
func (r *swarmRun) awaitAnswers(ctx context.Context, srcs []*peerSrc, deadline time.Time, markQuiet bool) {
	for _, src := range srcs {
		if r.n.quiet.has(src.id) {
			continue
		}
		if !answeredBy(ctx, src, deadline) {
			if ctx.Err() != nil {
				return
			}
			if markQuiet && src.hadTime() {
				r.n.quiet.mark(src.id)
			}
		}
	}
}

// responsive reports whether member id answered a poll, waiting for its
// first answer until deadline: a member that has not answered by then
// (stopped, frozen) is not asked to fetch for the fleet, and is remembered
// as quiet so the next misses do not wait for it. A loaded member answers
// late but within the wait, and so stays the fleet's one fetcher.
func (r *swarmRun) responsive(ctx context.Context, id string, deadline time.Time) bool {
	r.mu.Lock()
	src := r.srcs[id]
	r.mu.Unlock()
	if src == nil {
		return true
	}
	if !answeredBy(ctx, src, deadline) {
		if ctx.Err() == nil && src.hadTime() {
			r.n.quiet.mark(id)
		}
		return false
	}
	// A member whose last poll failed (a timeout on a loaded host) is still
	// asked: the request to fetch tests it, and skipping it made survivors
	// of a dead fetcher each fetch for themselves.
	return !src.isGone()
}

// answeredBy reports whether src answered a poll by deadline, waiting until
// then. An answer that is in wins over a deadline that has passed (select
// picks at random among ready cases: that passed over members that had
// answered, and survivors of a dead fetcher each fetched for themselves).
func answeredBy(ctx context.Context, src *peerSrc, deadline time.Time) bool {
	select {
	case <-src.answered:
		return true
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-src.answered:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	select {
	case <-src.answered:
		return true
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

// rarity weighs how easy piece i is to get elsewhere: two for each live
// source holding it, one for each receiving it now (it holds it soon).
func (r *swarmRun) rarity(i int) int {
	n := 0
	for _, s := range r.live() {
		s.mu.Lock()
		if !s.gone && s.have.Has(i) {
			n += 2
		} else if !s.gone && s.asked.Has(i) {
			n++
		}
		s.mu.Unlock()
	}
	return n
}

func (r *swarmRun) heldElsewhere(i int) bool {
	for _, s := range r.live() {
		if s.holds(i) {
			return true
		}
	}
	return false
}

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

// fetcher returns a source that fetches the blob from upstream and
// answered lately: the fleet has a fetcher at work, however slow its uplink.
// An unchanged holder answers a poll every pollEvery+pollWait, so lately is
// two of those, or the stall timeout if longer. "" if none.
func (r *swarmRun) fetcher() string {
	for _, s := range r.live() {
		if r.fetchingNow(s) {
			return s.id
		}
	}
	return ""
}

// fetchingNow reports whether s said it fetches the blob from upstream,
// in an answer within the last two poll rounds (or the stall timeout).
func (r *swarmRun) fetchingNow(s *peerSrc) bool {
	lately := max(r.n.opts.StallTimeout, 2*(pollEvery+pollWait))
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.gone && s.fetching && time.Since(s.heard) < lately
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

// fail notes that member id failed us. A member that comes back after
// rejoinAfter may fail many times: the client's error, if the download
// fails, tells its last failure.
func (r *swarmRun) fail(id, kind string, err error) {
	e := sourceErr{-1, kind, fmt.Errorf("%s: %w", id, err)}
	r.mu.Lock()
	if i, again := r.errAt[id]; again {
		r.errs[i] = e
	} else {
		r.errAt[id] = len(r.errs)
		r.errs = append(r.errs, e)
	}
	r.failed[id] = time.Now()
	r.mu.Unlock()
	r.n.m.fetches.WithLabelValues(kind, "error").Inc()
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
		if ctx.Err() == nil {
			r.n.quiet.heard(src.id) // it answered, even if with an error
		}
		if src.member && errors.Is(err, errNotHeld) {
			src.answer() // not yet: it may start the blob later
			if src.isGone() {
				return // dropped meanwhile (its workers failed); a new poll may replace it
			}
			select {
			case <-ctx.Done():
				return
			case <-src.kick:
			case <-time.After(notHeldRetry):
			}
			last = time.Time{} // it had nothing: ask again at once
			continue
		}
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
		src.asked, src.fetching, src.heard = st.Asked, st.Fetching, time.Now()
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
		if src.isGone() {
			return
		}
		// A slot of the node's piece downloads first: a few pieces at a
		// time arrive sooner (and are passed on sooner) than many slowly,
		// and leave room on the link for an upstream stream.
		select {
		case r.n.pieceSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		// What the source offers now, not before the wait for a slot: a
		// sibling worker may have been refused a piece meanwhile.
		gone, has := src.offer()
		if gone {
			<-r.n.pieceSlots
			return
		}
		changed := r.sw.changes()
		i := r.sw.claim(has, src.isPending, r.rarity)
		if i < 0 {
			<-r.n.pieceSlots
			waitChange(ctx, changed, 200*time.Millisecond)
			continue
		}
		src.setPending(i, true)
		asked := time.Now()
		data, err := r.fetchPiece(ctx, src, i)
		<-r.n.pieceSlots
		src.setPending(i, false)
		if errors.Is(err, errPieceSent) {
			// Another member has it on its way: ask this seed for another
			// piece now, and that member for this one once it holds it.
			r.sw.release(i)
			src.refuse(i, time.Now().Add(dataplane.PieceSentHold)) // the seed's hold
			continue
		}
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
			piece.Release(data)
			r.n.bad.add(r.dl.d, []string{src.id}) // the next fetch skips it too
			r.drop(src, err)
			return
		}
		if fresh {
			r.gotPiece(i, "peer", src.id, len(*data), time.Since(asked))
		} else {
			piece.Release(data)
		}
	}
}

// offer is what a worker may ask the source for: the pieces it holds, but
// those it refused lately; and whether it is gone.
func (p *peerSrc) offer() (bool, piece.Set) {
	p.mu.Lock()
	defer p.mu.Unlock()
	has, now := p.have, time.Now()
	cloned := false // p.have is shared: change a copy
	for i, until := range p.refused {
		switch {
		case now.After(until):
			delete(p.refused, i)
		case has.Has(i):
			if !cloned {
				has, cloned = has.Clone(), true
			}
			has.Remove(i)
		}
	}
	return p.gone, has
}

// refuse notes that the source refused piece i until the given time.
func (p *peerSrc) refuse(i int, until time.Time) {
	p.mu.Lock()
	if p.refused == nil {
		p.refused = map[int]time.Time{}
	}
	p.refused[i] = until
	p.mu.Unlock()
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
	buf := piece.Buffer()
	data := (*buf)[:end-off]
	idle := idleReader(body, r.n.opts.IdleTimeout, cancel)
	defer idle.stop()
	if _, err := io.ReadFull(r.n.throttled(ctx, idle), data); err != nil {
		piece.Release(buf)
		return nil, err
	}
	out := data
	return &out, nil
}
