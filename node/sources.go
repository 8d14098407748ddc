package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/piece"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/upstream"
)

// Router is content routing in the fleet; *p2p.Host and *p2p.MemoryRouter
// implement it.
type Router interface {
	PeerCount() int
	Advertise(ctx context.Context, keys ...string) error
	Withdraw(ctx context.Context, keys ...string) error
	Lookup(ctx context.Context, key string, count int) ([]p2p.Holder, error)
}

// Peers reads content from other nodes' data planes; *dataplane.Client
// implements it. A peer serves only what it holds.
type Peers interface {
	Blob(ctx context.Context, baseURL string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	Stat(ctx context.Context, baseURL string, d digest.Digest) (int64, error)
	Tag(ctx context.Context, baseURL, repoKey, tag string) (digest.Digest, error)
	// Pieces, Range and Fetch are the swarm's: a holder's piece state
	// (long-polled), one verified-size byte range, and asking a member to
	// fetch a blob from its upstream for the fleet.
	Pieces(ctx context.Context, baseURL string, d digest.Digest, from, after int, wait time.Duration) (piece.State, error)
	Range(ctx context.Context, baseURL string, d digest.Digest, off, end int64) (io.ReadCloser, error)
	Fetch(ctx context.Context, baseURL string, d digest.Digest, ns, repo string) error
}

// source is one place a blob's bytes can come from.
type source struct {
	kind string // "peer" or "upstream" (metrics label, Content.Source)
	from string // peer ID or registry name, for logs
	// hedge: how long to wait for the previous source to answer before
	// asking this one as well.
	hedge time.Duration
	open  func(ctx context.Context, offset int64) (io.ReadCloser, int64, error)
}

// holders asks the fleet who holds key. It keeps asking until someone is
// found or the lookup budget is spent: an announcement made a moment ago
// may still be on its way.
func (n *Node) holders(ctx context.Context, key string, count int) []p2p.Holder {
	if n.router == nil || n.peers == nil || n.router.PeerCount() == 0 {
		return nil // nobody to ask
	}
	ctx, cancel := context.WithTimeout(ctx, n.opts.LookupTimeout)
	defer cancel()
	start := time.Now()
	defer func() { n.m.lookupSeconds.Observe(time.Since(start).Seconds()) }()
	for {
		hs, err := n.router.Lookup(ctx, key, count)
		if err != nil {
			n.log.Debug("provider lookup failed", "key", key, "err", err)
		}
		var out []p2p.Holder
		for _, h := range hs {
			if h.DataURL != "" {
				out = append(out, h)
			}
		}
		if len(out) > 0 {
			return out
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(lookupRetry):
		}
	}
}

// lookupRetry spaces the lookups of one miss.
const lookupRetry = 2 * time.Millisecond

// blobSources lists where d can come from: holders in the fleet, then the
// upstream of name's registry.
func (n *Node) blobSources(ctx context.Context, name Name, d digest.Digest) []source {
	var srcs []source
	for _, h := range n.holders(ctx, d.String(), n.opts.MaxHolders) {
		if n.bad.has(d, h.ID) {
			continue // it served bytes that did not verify
		}
		srcs = append(srcs, source{kind: "peer", from: h.ID, hedge: n.opts.HedgeDelay,
			open: func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
				return n.peers.Blob(ctx, h.DataURL, d, off)
			}})
	}
	if n.mirrors(name) {
		srcs = append(srcs, source{kind: "upstream", from: name.NS, hedge: n.opts.UpstreamHedgeDelay,
			open: func(ctx context.Context, off int64) (io.ReadCloser, int64, error) {
				return n.openUpstream(ctx, name, d, off)
			}})
	}
	return srcs
}

// openUpstream opens d of name at its upstream from offset on and returns
// the body and the blob's total size.
func (n *Node) openUpstream(ctx context.Context, name Name, d digest.Digest, off int64) (io.ReadCloser, int64, error) {
	body, total, err := n.up.Blob(ctx, name.NS, name.Repo, d, off)
	if err == nil && total < 0 { // no Content-Length (chunked): ask HEAD
		if total, err = n.up.StatBlob(ctx, name.NS, name.Repo, d); err != nil || total < 0 {
			body.Close()
			return nil, 0, fmt.Errorf("upstream did not say the blob's size: %v", err)
		}
	}
	return body, total, err
}

type opened struct {
	i      int
	body   io.ReadCloser
	total  int64
	cancel context.CancelFunc
	err    error
}

// sourceErr is why one source could not deliver.
type sourceErr struct {
	i    int
	kind string
	err  error
}

func (e sourceErr) Error() string { return e.kind + ": " + e.err.Error() }

// openFirst asks srcs in order for the bytes from offset, asking the next
// one too when the previous has not answered within its hedge delay or
// failed. The first answer wins; the others are cancelled. The winner's
// cancel must be called once its body is done. failed lists the sources
// that could not answer.
func openFirst(ctx context.Context, srcs []source, offset int64) (won opened, failed []sourceErr) {
	results := make(chan opened, len(srcs))
	cancels := make([]context.CancelFunc, len(srcs))
	next, pending := 0, 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	launch := func() {
		i := next
		sctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		go func() {
			body, total, err := srcs[i].open(sctx, offset)
			results <- opened{i: i, body: body, total: total, cancel: cancel, err: err}
		}()
		next, pending = next+1, pending+1
		if next < len(srcs) {
			timer.Reset(srcs[next].hedge)
		}
	}
	for next < len(srcs) || pending > 0 {
		if pending == 0 {
			launch()
			continue
		}
		select {
		case r := <-results:
			pending--
			if r.err != nil {
				r.cancel()
				failed = append(failed, sourceErr{r.i, srcs[r.i].kind, fmt.Errorf("%s: %w", srcs[r.i].from, r.err)})
				continue
			}
			for i, c := range cancels {
				if c != nil && i != r.i {
					c()
				}
			}
			go drain(results, pending)
			return r, failed
		case <-timer.C:
			if next < len(srcs) {
				launch()
			}
		case <-ctx.Done():
			go drain(results, pending)
			return opened{}, append(failed, sourceErr{-1, "fetch", ctx.Err()})
		}
	}
	return opened{}, failed
}

// drain closes the bodies of losing sources as they answer.
func drain(results <-chan opened, pending int) {
	for range pending {
		r := <-results
		if r.body != nil {
			r.body.Close()
		}
		r.cancel()
	}
}

// without returns srcs less the ones at the indices in drop.
func without(srcs []source, drop map[int]bool) []source {
	var out []source
	for i, s := range srcs {
		if !drop[i] {
			out = append(out, s)
		}
	}
	return out
}

// classify turns what every source said into the error a client sees: an
// upstream failure when the upstream failed other than by "not found",
// else not found (peers failing only means they could not help).
func classify(what string, errs []sourceErr) error {
	var all []error
	upstreamFailed := false
	for _, e := range errs {
		all = append(all, e)
		if e.kind != "peer" && !isNotFound(e.err) {
			upstreamFailed = true
		}
	}
	if upstreamFailed {
		return fmt.Errorf("%s: %w: %v", what, ErrUpstream, errors.Join(all...))
	}
	if len(all) == 0 {
		return fmt.Errorf("%s: %w", what, blobstore.ErrNotFound)
	}
	return fmt.Errorf("%s: %w (%v)", what, blobstore.ErrNotFound, errors.Join(all...))
}

func isNotFound(err error) bool {
	return errors.Is(err, blobstore.ErrNotFound) || errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrNoUpstream)
}
