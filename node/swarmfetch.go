package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/piece"
)

const (
	// requestsPerSource is how many pieces one source is asked for at a
	// time: one in transfer while the next request crosses the LAN.
	requestsPerSource = 2
	// maxPieceRequests bounds a node's piece requests to peers in flight,
	// over all its downloads: 6 MiB at a time, half a second's worth at
	// 100 Mbit/s.
	maxPieceRequests = 6
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
	// rejoinAfter is how long a member whose data plane failed (a dial
	// timeout on a loaded host, a restart) is left out of a download
	// before it may be a source again.
	rejoinAfter = 2 * time.Second
	// fetcherWait is how long from a download's start a member that ranks
	// before this node has to answer its first poll before it is passed
	// over as the fleet's fetcher: long enough for a loaded member in a
	// rollout, and paid once per frozen member (it is then quiet).
	fetcherWait = time.Second
)

// swarmRun is one download in a fleet: pieces from every holder at once,
// and from upstream only when this node is the one the fleet fetches
// through.
type swarmRun struct {
	n    *Node
	dl   *download
	sw   *swarm
	name Name
	what string

	mu     sync.Mutex
	srcs   map[string]*peerSrc
	failed map[string]time.Time // members whose data plane failed us, and when
	// slowFetch: members asked to fetch for the fleet that did not answer
	// in time; counted on once (a loaded member), passed over after.
	slowFetch  map[string]bool
	used       []string // peers whose pieces went in
	upStarted  bool
	upErr      error // why upstream could not deliver
	errs       []sourceErr
	errAt      map[string]int // member → its failure in errs
	announced  bool
	lastChoose time.Time
	start      time.Time // when the download started
	grew       time.Time // when a source last reported more pieces

	// ctx is the download's: a fleet member's request to fetch from
	// upstream starts the upstream fetcher under it.
	ctx context.Context
	wg  sync.WaitGroup
}

// fetchSwarm fetches dl's blob piece by piece from holders in the fleet
// (complete or still downloading), and from upstream when this node is the
// fleet's fetcher for it. Pieces are verified against their hashes before
// they are served on, the whole blob against its digest before commit.
func (n *Node) fetchSwarm(ctx context.Context, dl *download, w blobstore.Writer, name Name) error {
	ctx, cancel := context.WithCancel(ctx)
	r := &swarmRun{n: n, dl: dl, sw: dl.sw, name: name, srcs: map[string]*peerSrc{}, failed: map[string]time.Time{}, slowFetch: map[string]bool{}, errAt: map[string]int{},
		what: fmt.Sprintf("blob %s@%s", name.Repo, dl.d), ctx: ctx, start: time.Now()}
	defer r.wg.Wait()
	defer cancel()
	dl.setRun(r)

	// Ask the members and the DHT at once, within one lookup budget. In a
	// fleet the members' answers decide; the DHT's holders join as sources
	// whenever its lookup ends (a lookup waits out its budget on a frozen
	// peer, so a miss does not wait for it when the members answered).
	budget := time.Now().Add(n.opts.LookupTimeout)
	asked := r.askMembers(ctx)
	looked := make(chan bool, 1)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		found := false
		for _, h := range n.holders(ctx, dl.d.String(), swarmHolders) {
			found = r.addSource(ctx, h.ID, h.DataURL, false) || found
		}
		looked <- found
	}()
	found := false
	if len(asked) == 0 { // no fleet list, or nobody else on it: the DHT decides
		found = <-looked
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
		changed := r.sw.changes()
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
			piece.Release(&data)
			continue
		}
		if err := r.stuck(ctx); err != nil {
			return err
		}
		waitChange(ctx, changed, 250*time.Millisecond)
	}
	if !sizeSet { // complete as soon as its size was known: a 0-byte blob
		dl.setSize(r.sw.knownSize(), r.firstKind())
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
	// Nobody holds what we lack, no piece came for a while, no source
	// gained a piece, and no source that fetches from upstream answered
	// lately (a slow fetcher still answers): the fetcher is gone. Rank
	// again and ask (or become) the next one.
	if !upRunning && idle > r.n.opts.StallTimeout && r.sinceGrowth() > r.n.opts.StallTimeout &&
		!r.available() && r.fetcher() == "" && r.canChoose() {
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
	// Before anyone fetches from upstream for the fleet, every member that
	// is not known to be quiet has its say: a loaded holder answers late.
	wait := r.start.Add(max(fetcherWait, r.n.opts.LookupTimeout))
	if r.heldInFleet(ctx, wait) {
		return "fleet"
	}
	if id := r.fetcher(); id != "" {
		return id // a member fetches it already
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
		if why := r.passOver(ctx, m, wait); why != "" {
			r.n.log.Debug("swarm: member passed over as fetcher", "digest", r.dl.d, "member", m.ID, "why", why)
			continue
		}
		fctx, cancel := context.WithTimeout(ctx, fetchAnswerWait+time.Second)
		err := r.n.peers.Fetch(fctx, m.DataURL, r.dl.d, ns, r.name.Repo)
		cancel()
		r.mu.Lock()
		countOn := err != nil && isTimeout(err) && !isDial(err) && ctx.Err() == nil && !r.slowFetch[m.ID]
		if countOn {
			r.slowFetch[m.ID] = true
		}
		if countOn || err == nil {
			r.lastChoose = time.Now() // the stall check gives it its time from now
		}
		r.mu.Unlock()
		if countOn {
			// It answered polls, and took this request but did not answer
			// it in time: a loaded member, which fetches. Asking the next
			// one as well made two fetchers. Its polls tell; if the swarm
			// stalls, the next in rank is asked.
			r.n.log.Debug("swarm: member slow to answer the request to fetch; counting on it", "digest", r.dl.d, "member", m.ID, "err", err)
			r.addSource(ctx, m.ID, m.DataURL, false)
			r.wake(m.ID)
			return m.ID
		}
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

// passOver says why member m is not asked to fetch for the fleet, or "".
func (r *swarmRun) passOver(ctx context.Context, m Member, wait time.Time) string {
	r.mu.Lock()
	_, failed := r.failed[m.ID]
	slow := r.slowFetch[m.ID]
	r.mu.Unlock()
	switch {
	case m.DataURL == "":
		return "no data plane"
	case failed:
		return "failed this download"
	case slow:
		return "did not answer a request to fetch in time"
	case r.n.bad.has(r.dl.d, m.ID):
		return "sent bad pieces"
	case r.n.quiet.has(m.ID):
		return "quiet"
	case !r.responsive(ctx, m.ID, wait):
		return "no answer"
	}
	return ""
}

// discover looks for new holders while the blob swarms: members that
// joined the fleet since, and nodes the DHT knows as holders. In a fleet
// every member is polled already, so the DHT (a lookup costs every node it
// asks some CPU) is asked only every tenth round.
func (r *swarmRun) discover(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(relookupEvery)
	defer t.Stop()
	for round := 1; !r.sw.complete(); round++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.n.members != nil {
			r.askMembers(ctx)
			if round%10 != 0 {
				continue
			}
		}
		for _, h := range r.n.holders(ctx, r.dl.d.String(), swarmHolders) {
			r.addSource(ctx, h.ID, h.DataURL, false)
		}
	}
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
// took is how long its request (or, from upstream, its bytes) took.
func (r *swarmRun) gotPiece(i int, kind, from string, size int, took time.Duration) {
	r.n.m.fetchedBytes.WithLabelValues(kind).Add(float64(size))
	r.n.log.Debug("swarm: piece", "digest", r.dl.d, "piece", i, "source", kind, "peer", from, "took", took)
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

// isTimeout reports whether err is a request that ran out of time (its
// deadline, or a dial or read timeout), rather than a refusal.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// isDial reports whether err happened while connecting: the request never
// left.
func isDial(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
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
