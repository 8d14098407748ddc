package node

import (
	"context"
	"errors"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/p2p"
)

// Store is the store as everyone should use it: when the node is in a fleet,
// every verified blob and manifest committed, and every tag set, is announced
// to the fleet; what goes away is withdrawn. The registry API's pushes and
// the node's own downloads go through it alike.
func (n *Node) Store() blobstore.Store { return n.store }

// announce tells the fleet, without waiting, that the node holds d. A miss
// elsewhere keeps looking within its budget, so a download need not wait.
func (n *Node) announce(d digest.Digest) {
	if n.announcer != nil {
		n.announcer.add(d.String())
	}
}

// advertiser decorates a store with announcements to the fleet.
type advertiser struct {
	blobstore.Store
	a *announcer
}

func (s advertiser) NewWriter(ctx context.Context) (blobstore.Writer, error) {
	w, err := s.Store.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	return advWriter{Writer: w, a: s.a}, nil
}

type advWriter struct {
	blobstore.Writer
	a *announcer
}

// Commit announces what it committed and waits (at most AnnounceWait) for
// the announcement: once a push answered, the fleet can find the content.
func (w advWriter) Commit(ctx context.Context, size int64, d digest.Digest) (blobstore.Info, error) {
	info, err := w.Writer.Commit(ctx, size, d)
	if err == nil {
		w.a.add(d.String())
		w.a.waitBounded(ctx)
	}
	return info, err
}

func (s advertiser) Tag(ctx context.Context, repo, tag string, d digest.Digest) error {
	err := s.Store.Tag(ctx, repo, tag, d)
	if err == nil {
		s.a.add(p2p.TagKey(repo, tag))
		s.a.waitBounded(ctx)
	}
	return err
}

func (s advertiser) Untag(ctx context.Context, repo, tag string) error {
	err := s.Store.Untag(ctx, repo, tag)
	if err == nil {
		s.a.remove(p2p.TagKey(repo, tag))
	}
	return err
}

func (s advertiser) UntagIf(ctx context.Context, repo, tag string, d digest.Digest) error {
	err := s.Store.UntagIf(ctx, repo, tag, d)
	if err == nil {
		s.a.remove(p2p.TagKey(repo, tag))
	}
	return err
}

func (s advertiser) Delete(ctx context.Context, d digest.Digest) error {
	err := s.Store.Delete(ctx, d)
	if err == nil {
		s.a.remove(d.String())
	}
	return err
}

func (s advertiser) Unlink(ctx context.Context, repo string, d digest.Digest) error {
	err := s.Store.Unlink(ctx, repo, d)
	if err == nil {
		if _, serr := s.Store.Stat(ctx, d); errors.Is(serr, blobstore.ErrNotFound) {
			s.a.remove(d.String()) // the last link went, and the file with it
		}
	}
	return err
}

// announcer hands announcements to the router from one goroutine, so a
// commit never waits for the network.
type announcer struct {
	router Router
	store  blobstore.Store // undecorated
	n      *Node

	mu      sync.Mutex
	pending map[string]bool // key -> advertise (true) or withdraw (false); the last action wins
	queued  uint64          // adds queued so far
	flushed uint64          // adds handed to the router so far
	round   chan struct{}   // closed and replaced after each round
	wake    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

func (a *announcer) add(key string) {
	a.mu.Lock()
	a.pending[key] = true
	a.queued++
	a.mu.Unlock()
	a.poke()
}

// waitBounded is wait for at most the node's AnnounceWait.
func (a *announcer) waitBounded(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, a.n.opts.AnnounceWait)
	defer cancel()
	a.wait(ctx)
}

// wait blocks until everything added so far was handed to the router, or
// ctx ends.
func (a *announcer) wait(ctx context.Context) {
	a.mu.Lock()
	target := a.queued
	a.mu.Unlock()
	for {
		a.mu.Lock()
		flushed, round := a.flushed, a.round
		a.mu.Unlock()
		if flushed >= target {
			return
		}
		select {
		case <-round:
		case <-ctx.Done():
			return
		case <-a.done:
			return
		}
	}
}

func (a *announcer) remove(key string) {
	a.mu.Lock()
	a.pending[key] = false
	a.mu.Unlock()
	a.poke()
}

func (a *announcer) poke() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// run announces everything in the store, then whatever changes, until Close.
func (a *announcer) run(ctx context.Context) {
	defer close(a.done)
	a.announceAll(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
		a.mu.Lock()
		var adds, removes []string
		for k, advertise := range a.pending {
			if advertise {
				adds = append(adds, k)
			} else {
				removes = append(removes, k)
			}
		}
		clear(a.pending)
		upto := a.queued
		a.mu.Unlock()
		if len(removes) > 0 {
			if err := a.router.Withdraw(ctx, removes...); err != nil {
				a.n.log.Warn("withdraw from fleet", "keys", len(removes), "err", err)
			}
		}
		if len(adds) > 0 {
			if err := a.router.Advertise(ctx, adds...); err != nil {
				a.n.log.Warn("advertise to fleet", "keys", len(adds), "err", err)
			}
		}
		a.mu.Lock()
		a.flushed = upto
		close(a.round)
		a.round = make(chan struct{})
		a.mu.Unlock()
	}
}

func (a *announcer) announceAll(ctx context.Context) {
	var keys []string
	err := errors.Join(
		a.store.Walk(ctx, func(i blobstore.Info) error {
			keys = append(keys, i.Digest.String())
			return nil
		}),
		a.store.WalkTags(ctx, func(repo, tag string, _ digest.Digest) error {
			keys = append(keys, p2p.TagKey(repo, tag))
			return nil
		}))
	if err != nil {
		a.n.log.Warn("list store for the fleet", "err", err)
	}
	if len(keys) == 0 {
		return
	}
	if err := a.router.Advertise(ctx, keys...); err != nil && ctx.Err() == nil {
		a.n.log.Warn("advertise store to fleet", "keys", len(keys), "err", err)
		return
	}
	a.n.log.Info("advertised store to fleet", "keys", len(keys))
}
