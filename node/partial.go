package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/internal/piece"
)

var (
	// errBusyPeer: a holder serves as many bodies as it allows right now.
	errBusyPeer = dataplane.ErrBusy
	// errPieceSent: a seed sent that piece to another member just now.
	errPieceSent = dataplane.ErrPieceSent
	// errNotHeld: the peer has no such blob (any more).
	errNotHeld = dataplane.ErrNotHeld
)

// The node answers its data plane about what lies beyond its store.
var _ dataplane.Swarm = (*Node)(nil)

// Pieces tells a peer which verified pieces of d this node holds: all of a
// stored blob, or those of a download in flight (waiting up to wait for
// more than after of them).
func (n *Node) Pieces(ctx context.Context, d digest.Digest, from, after int, wait time.Duration) (piece.State, error) {
	if dl := n.inflight(d); dl != nil && dl.sw != nil {
		if _, ok := dl.sw.state(from); !ok && after < 0 && !dl.sw.finished() {
			// A first poll of a download whose size is not known yet: "not
			// yet", at once; members ask again and stay responsive.
			return piece.State{}, fmt.Errorf("%s: %w", d, blobstore.ErrNotFound)
		}
		deadline := time.Now().Add(wait)
		for {
			st, ok := dl.sw.state(from)
			have, changed := dl.sw.haveCount()
			if ok && (have > after || wait <= 0) {
				return st, nil
			}
			if !ok && dl.sw.finished() {
				break // committed: answer from the store
			}
			left := time.Until(deadline)
			if left <= 0 {
				if ok {
					return st, nil
				}
				break
			}
			t := time.NewTimer(left)
			select {
			case <-changed:
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return piece.State{}, ctx.Err()
			}
			t.Stop()
		}
	}
	info, err := n.ingest.Stat(ctx, d)
	if err != nil {
		return piece.State{}, err
	}
	count := piece.Count(info.Size)
	st := piece.State{Size: info.Size, Complete: true, Have: piece.Full(count), From: min(from, count)}
	// Hashing a large blob takes a while: answer without hashes until they
	// are ready (the peer asks again), rather than hold the request.
	hashes, ok := n.hashes.lookup(info.Digest)
	if !ok {
		hashes, ok = n.hashes.compute(ctx, n.ingest, info, max(wait, 100*time.Millisecond), n.goBackground)
	}
	if ok {
		for _, h := range hashes[st.From:] {
			st.Hashes = append(st.Hashes, h.String())
		}
	}
	return st, nil
}

// ReadAt reads verified bytes of a download in flight, within one piece.
// Bytes already written are read as a client would (following the
// download through its commit), so a piece stays readable while the blob
// moves into the store.
func (n *Node) ReadAt(ctx context.Context, d digest.Digest, p []byte, off int64) (int, error) {
	dl := n.inflight(d)
	if dl == nil || dl.sw == nil {
		return 0, fmt.Errorf("%s: %w", d, blobstore.ErrNotFound)
	}
	if end := (off/piece.Size + 1) * piece.Size; int64(len(p)) > end-off {
		p = p[:end-off]
	}
	k, inBuf, held := dl.sw.buffered(p, off)
	switch {
	case inBuf:
		return k, nil
	case !held:
		return 0, fmt.Errorf("%s: byte %d: %w", d, off, blobstore.ErrNotFound)
	}
	f := &follower{ctx: ctx, dl: dl, store: n.ingest, off: off}
	defer f.Close()
	k, err := io.ReadFull(f, p)
	if errors.Is(err, io.ErrUnexpectedEOF) || (errors.Is(err, io.EOF) && k == len(p)) {
		err = nil
	}
	return k, err
}

// Fetch makes this node fetch d of ns/repo from its upstream for the
// fleet, which ranked it first; it returns once the blob's size is known.
func (n *Node) Fetch(ctx context.Context, d digest.Digest, ns, repo string) error {
	if err := blobstore.CheckDigest(d); err != nil {
		return err
	}
	name := Name{NS: ns, Repo: repo}
	if _, err := n.ingest.Stat(ctx, d); err == nil {
		return nil
	}
	if !n.mirrors(name) {
		return fmt.Errorf("no upstream for %q: %w", ns, blobstore.ErrNotFound)
	}
	dl, _ := n.joinAs(ctx, name, d, true)
	if dl == nil {
		return nil // committed meanwhile
	}
	if dl.sw != nil {
		dl.sw.becomeOrigin()
		if r := dl.getRun(); r != nil {
			r.ensureUpstream(r.ctx)
		}
	}
	// Answer once the upstream said the size (or failed), but not later
	// than fetchAnswerWait: a slow upstream must not make the asking member
	// give up and ask another (two fetchers); it learns the rest by polling.
	wctx, cancel := context.WithTimeout(ctx, fetchAnswerWait)
	defer cancel()
	_, _, err := dl.waitSize(wctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return nil
	}
	return err
}

// fetchAnswerWait bounds how long a fetch for the fleet waits for the
// upstream's first answer before it answers "started".
const fetchAnswerWait = 500 * time.Millisecond

// hashCache keeps the piece hashes of a few stored blobs: computing them
// reads the whole blob.
type hashCache struct {
	mu      sync.Mutex
	hashes  map[digest.Digest][]piece.Hash
	order   []digest.Digest
	running map[digest.Digest]chan struct{} // hashing in progress
}

const hashCacheSize = 64

func (c *hashCache) lookup(d digest.Digest) ([]piece.Hash, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	h, ok := c.hashes[d]
	return h, ok
}

// compute hashes a stored blob's pieces in the background (once per blob
// at a time) and waits up to wait for the result.
func (c *hashCache) compute(ctx context.Context, s blobstore.Store, info blobstore.Info, wait time.Duration, spawn func(func()) bool) ([]piece.Hash, bool) {
	c.mu.Lock()
	if c.running == nil {
		c.running = map[digest.Digest]chan struct{}{}
	}
	done, running := c.running[info.Digest]
	if !running {
		done = make(chan struct{})
		c.running[info.Digest] = done
		finish := func() {
			c.mu.Lock()
			delete(c.running, info.Digest)
			c.mu.Unlock()
			close(done)
		}
		if !spawn(func() {
			defer finish()
			b, err := s.Open(context.Background(), info.Digest)
			if err != nil {
				return
			}
			defer b.Close()
			if h, err := piece.HashAll(b, info.Size); err == nil {
				c.put(info.Digest, h)
			}
		}) {
			c.mu.Unlock()
			finish()
			return nil, false
		}
	}
	c.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
		return c.lookup(info.Digest)
	case <-t.C:
	case <-ctx.Done():
	}
	return nil, false
}

// put remembers the hashes a download learned, so serving the blob once
// stored costs no second read.
func (c *hashCache) put(d digest.Digest, h []piece.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hashes == nil {
		c.hashes = map[digest.Digest][]piece.Hash{}
	}
	if _, ok := c.hashes[d]; !ok {
		c.order = append(c.order, d)
		if len(c.order) > hashCacheSize {
			delete(c.hashes, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.hashes[d] = h
}

// goBackground runs f on a goroutine Close waits for, unless the node is
// closing.
func (n *Node) goBackground(f func()) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return false
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
	return true
}

// throttled applies the download rate cap, if any.
func (n *Node) throttled(ctx context.Context, r io.Reader) io.Reader {
	if n.opts.Throttle == nil {
		return r
	}
	return n.opts.Throttle(ctx, r)
}

// idleReader calls abort when no byte arrived for idle.
func idleReader(r io.Reader, idle time.Duration, abort context.CancelFunc) *idleR {
	return &idleR{r: r, t: time.AfterFunc(idle, abort), idle: idle}
}

type idleR struct {
	r    io.Reader
	t    *time.Timer
	idle time.Duration
}

func (i *idleR) stop() { i.t.Stop() }

func (i *idleR) Read(p []byte) (int, error) {
	k, err := i.r.Read(p)
	if k > 0 {
		i.t.Reset(i.idle)
	}
	if err != nil {
		i.t.Stop()
	}
	return k, err
}
