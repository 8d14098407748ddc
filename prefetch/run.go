package prefetch

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// maxErrorLen bounds the error a report carries (it is gossiped).
const maxErrorLen = 300

// execute carries out the orders that select this member, one at a time,
// oldest first, until ctx ends.
func (m *Manager) execute(ctx context.Context) {
	for ctx.Err() == nil {
		o, wait, ok := m.next()
		if ok {
			m.run(ctx, o)
			continue
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-m.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// idleWait is how long the executor sleeps with nothing due (orders that
// arrive wake it sooner).
const idleWait = time.Minute

// next picks the oldest order due here: selecting this member, before its
// deadline, not complete, and not waiting for a retry. Otherwise it says
// how long until the next retry is due. Orders whose deadline passed
// before they completed are marked failed on the way.
func (m *Manager) next() (Order, time.Duration, bool) {
	now := m.opts.Now()
	wait := idleWait
	var due []Order
	var expired []Report
	m.mu.Lock()
	for _, o := range m.t.orders {
		if !o.Selects(m.rt.Labels) {
			continue
		}
		r, ok := m.t.report(o.ID, m.rt.Self)
		if ok && r.State == Complete {
			continue
		}
		if !now.Before(o.Deadline) {
			if ok && (r.State == Pending || r.State == Pulling || !r.RetryAt.IsZero()) {
				expired = append(expired, m.setOwnLocked(o.ID, func(r *Report) {
					if r.State != Failed {
						r.Error = "deadline passed before the pull completed"
					}
					r.State, r.RetryAt = Failed, time.Time{}
				}))
			}
			continue
		}
		if ok && r.State == Failed {
			if r.RetryAt.IsZero() {
				continue
			}
			if r.RetryAt.After(now) {
				wait = min(wait, r.RetryAt.Sub(now))
				continue
			}
		}
		due = append(due, o)
	}
	m.mu.Unlock()
	for i := range expired {
		m.send(message{Report: &expired[i]})
		m.tellOrigin(expired[i])
	}
	if len(expired) > 0 {
		_ = m.save()
	}
	if len(due) == 0 {
		return Order{}, wait, false
	}
	oldest := due[0]
	for _, o := range due[1:] {
		if cmp.Or(o.Created.Compare(oldest.Created), cmp.Compare(o.ID, oldest.ID)) < 0 {
			oldest = o
		}
	}
	return oldest, 0, true
}

// run pulls every image of o and pins it, reporting as it goes.
func (m *Manager) run(ctx context.Context, o Order) {
	m.mu.Lock()
	rt := *m.rt
	cur, _ := m.t.report(o.ID, rt.Self)
	attempt := cur.Attempts + 1
	m.mu.Unlock()
	m.changeState(o.ID, func(r *Report) {
		r.State, r.Attempts, r.Error, r.RetryAt, r.Lasting, r.Done, r.Total, r.Digests = Pulling, attempt, "", time.Time{}, false, 0, 0, nil
	})
	m.log.Info("prefetch pulling", "order", o.ID, "refs", o.Refs, "attempt", attempt)

	octx, cancel := context.WithDeadline(ctx, o.Deadline)
	defer cancel()
	platforms, _ := o.platforms() // validated when the order was kept
	var done, total int64
	var digests []string
	for _, s := range o.Refs {
		d, size, err := m.pullOne(octx, rt, o, s, platforms, done, total)
		if err != nil {
			if ctx.Err() != nil {
				return // shutting down: the report stays "pulling" and resumes after a restart
			}
			m.failed(o, attempt, fmt.Errorf("%s: %w", s, err))
			return
		}
		done, total = done+size, total+size
		digests = append(digests, d.String())
	}
	m.changeState(o.ID, func(r *Report) {
		r.State, r.Done, r.Total, r.Digests, r.Error = Complete, done, total, digests, ""
	})
	m.log.Info("prefetch complete", "order", o.ID, "refs", o.Refs, "bytes", total, "digests", digests)
}

// pullOne pulls and pins one reference; done and total are the bytes of
// the references before it. It returns the image's digest and blob bytes.
func (m *Manager) pullOne(ctx context.Context, rt Runtime, o Order, s string, platforms []node.Platform, done, total int64) (digest.Digest, int64, error) {
	ref, err := ParseRef(s)
	if err != nil {
		return "", 0, err
	}
	name, reference := target(ref, rt.DefaultRegistry)
	var size int64
	d, err := rt.Puller.PullImage(ctx, name, reference, node.PullOptions{
		Platforms: platforms,
		Progress: func(p node.Progress) {
			size = p.Total
			m.progress(o.ID, done+p.Done, total+p.Total)
		},
	})
	if err != nil {
		return "", 0, err
	}
	if !o.NoPin && rt.Pinner != nil {
		if err := rt.Pinner.Pin(ctx, d); err != nil {
			return "", 0, fmt.Errorf("pin %s: %w", d, err)
		}
	}
	return d, size, nil
}

// progress records bytes; flushLoop gossips them.
func (m *Manager) progress(id string, done, total int64) {
	m.mu.Lock()
	m.setOwnLocked(id, func(r *Report) { r.Done, r.Total = done, total })
	m.dirty[id] = true
	m.mu.Unlock()
}

// changeState records a new state, gossips it and writes the file at once.
func (m *Manager) changeState(id string, update func(*Report)) {
	m.mu.Lock()
	r := m.setOwnLocked(id, update)
	delete(m.dirty, id)
	m.mu.Unlock()
	m.send(message{Report: &r})
	m.tellOrigin(r)
	if err := m.save(); err != nil {
		m.log.Warn("write prefetch state", "err", err)
	}
}

// tellOrigin sends a final report, or a failure that will be retried,
// straight to the member that accepted the order as well: gossip reaches
// every member in a few rounds, but a member it misses hears only at the
// next push/pull (up to PushPullInterval), and the command watching the
// order would wait that long (or not show that the device retries). Called
// from the executor, which holds m.wg, so Close waits for the send.
func (m *Manager) tellOrigin(r Report) {
	m.mu.Lock()
	rt, o := m.rt, m.t.orders[r.Order]
	m.mu.Unlock()
	if (r.State != Complete && r.State != Failed) || rt == nil || rt.SendTo == nil || o.Origin == "" || o.Origin == rt.Self {
		return
	}
	b, err := json.Marshal(message{Report: &r})
	if err != nil {
		return
	}
	m.wg.Go(func() {
		if err := rt.SendTo(o.Origin, b); err != nil {
			m.log.Debug("final report not sent to the order's origin", "order", r.Order, "origin", o.Origin, "err", err)
		}
	})
}

// failed records a failed attempt and when the next one starts: with a
// growing backoff, while the deadline allows.
func (m *Manager) failed(o Order, attempt int, err error) {
	now := m.opts.Now()
	retry := now.Add(m.backoff(attempt))
	msg := err.Error()
	if errors.Is(err, context.DeadlineExceeded) && !now.Before(o.Deadline) {
		msg = "deadline passed: " + msg
	}
	if len(msg) > maxErrorLen {
		msg = msg[:maxErrorLen] + "…"
	}
	if !retry.Before(o.Deadline) {
		retry = time.Time{} // no time left: final
	}
	lasting := lasting(err)
	m.changeState(o.ID, func(r *Report) { r.State, r.Error, r.RetryAt, r.Lasting = Failed, msg, retry, lasting })
	m.log.Warn("prefetch failed", "order", o.ID, "attempt", attempt, "retry_at", retry, "err", err)
}

// lasting reports whether a failed pull is unlikely to pass on a retry
// soon: the image is unknown, or it has no manifest for the platforms
// asked. An upstream or peer that failed or did not answer, a blob the
// fleet could not deliver (the upstream gone while it swarmed), a full
// disk may pass; what is not known to pass counts as lasting.
func lasting(err error) bool {
	switch {
	case errors.Is(err, node.ErrImageUnknown), errors.Is(err, node.ErrNoPlatform):
		return true
	case errors.Is(err, node.ErrUpstream), errors.Is(err, blobstore.ErrNotFound),
		errors.Is(err, blobstore.ErrNoSpace), errors.Is(err, context.DeadlineExceeded):
		return false
	}
	return true
}

func (m *Manager) backoff(attempt int) time.Duration {
	d := m.opts.RetryMin
	for i := 1; i < attempt && d < m.opts.RetryMax; i++ {
		d *= 2
	}
	return min(d, m.opts.RetryMax)
}
