package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/imgmesh/imgmesh/internal/piece"
)

// ensureUpstream starts the upstream fetcher of this download once.
func (r *swarmRun) ensureUpstream(ctx context.Context) {
	if !r.n.mirrors(r.name) {
		return
	}
	r.mu.Lock()
	start := !r.upStarted
	r.upStarted = true
	r.mu.Unlock()
	if start {
		r.wg.Add(1)
		go r.fromUpstream(ctx)
	}
}

// fromUpstream streams the pieces that no known holder has from upstream,
// in order, hashing each as it passes: these hashes are what the rest of
// the fleet verifies the pieces against. A piece someone else holds or
// fetches is skipped with a new ranged request, so what the fleet already
// fetched is not fetched again after a takeover.
func (r *swarmRun) fromUpstream(ctx context.Context) {
	defer r.wg.Done()
	r.sw.setFetching(true)
	defer r.sw.setFetching(false)
	attempts := 0
	fail := func(err error) bool {
		attempts++
		r.mu.Lock()
		r.errs = append(r.errs, sourceErr{-1, "upstream", err})
		if attempts >= maxAttempts || isNotFound(err) {
			r.upErr = err
		}
		dead := r.upErr != nil
		r.mu.Unlock()
		r.n.m.fetches.WithLabelValues("upstream", "error").Inc()
		r.sw.poke()
		return dead
	}
	for ctx.Err() == nil && !r.sw.complete() {
		if id := r.outranked(); id != "" {
			// Two fetchers: this node was chosen while the one ranked
			// first answered late, and fetches for itself. This one yields;
			// if the other fails, the fleet's takeover restarts it.
			r.n.log.Debug("swarm: a member ranked first fetches too; leaving upstream to it", "digest", r.dl.d, "member", id)
			r.mu.Lock()
			r.upStarted = false
			r.mu.Unlock()
			return
		}
		i := 0
		changed := r.sw.changes()
		if r.sw.knownSize() >= 0 {
			if i = r.sw.claimUpstream(0, r.heldElsewhere); i < 0 {
				waitChange(ctx, changed, 200*time.Millisecond)
				continue
			}
		}
		err := r.streamFrom(ctx, i)
		if err == nil {
			attempts = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		r.n.log.Debug("upstream broke, trying again", "digest", r.dl.d, "piece", i, "err", err)
		if fail(err) {
			return
		}
	}
}

// streamFrom opens upstream at piece i (claimed, unless the size is still
// unknown) and takes consecutive pieces while nobody else has them.
func (r *swarmRun) streamFrom(ctx context.Context, i int) error {
	claimed := r.sw.knownSize() >= 0
	off := int64(i) * piece.Size
	r.n.log.Debug("swarm: upstream stream", "digest", r.dl.d, "piece", i)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	body, total, err := r.n.openUpstream(ctx, r.name, r.dl.d, off)
	if err != nil {
		if claimed {
			r.sw.release(i)
		}
		return err
	}
	defer body.Close()
	if err := r.sw.setSize(total); err != nil {
		if claimed {
			r.sw.release(i)
		}
		return fmt.Errorf("upstream %w", err)
	}
	r.n.m.fetches.WithLabelValues("upstream", "ok").Inc()
	if !claimed {
		if i = r.sw.claimUpstream(0, r.heldElsewhere); i != 0 {
			if i > 0 {
				r.sw.release(i)
			}
			return nil // someone else has the first piece already: start over where needed
		}
	}
	idle := idleReader(body, r.n.opts.IdleTimeout, cancel)
	defer idle.stop()
	in := r.n.throttled(ctx, idle)
	since := time.Now()
	for {
		start, end := piece.Bounds(i, total)
		buf := piece.Buffer()
		data := (*buf)[:end-start]
		if _, err := io.ReadFull(in, data); err != nil {
			piece.Release(buf)
			r.sw.release(i)
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		fresh, err := r.sw.deliver(i, data, true)
		if err != nil { // a peer's hash for this piece disagrees with upstream's bytes
			piece.Release(buf)
			return err
		}
		if fresh {
			r.gotPiece(i, "upstream", "", len(data), time.Since(since))
		} else {
			piece.Release(buf)
		}
		since = time.Now()
		if r.outranked() != "" {
			return nil // the loop above yields
		}
		next := r.sw.claimUpstream(i+1, r.heldElsewhere)
		if next != i+1 {
			if next >= 0 {
				r.sw.release(next)
			}
			return nil
		}
		i = next
	}
}

// outranked returns a member that fetches this blob from upstream too,
// answered lately, and ranks before this node for it: "" if none. Two
// fetchers happen when a loaded member answered after the fleet's wait and
// was passed over while it fetched for itself; every node ranks the pair
// the same way, so exactly one yields.
func (r *swarmRun) outranked() string {
	if r.n.members == nil {
		return ""
	}
	var self Member
	for _, m := range r.n.members.Members() {
		if m.Self {
			self = m
			break
		}
	}
	if self.ID == "" {
		return ""
	}
	for _, s := range r.live() {
		if s.id != self.ID && r.fetchingNow(s) && rank(r.dl.d, []Member{self, {ID: s.id}})[0].ID == s.id {
			return s.id
		}
	}
	return ""
}
