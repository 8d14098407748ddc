package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Blob returns blob d of name: from the store, else from a download in
// flight (started here when there is none). Every reader of a download
// streams from the first byte; the upstream is asked once however many
// clients want the blob at the same time.
func (n *Node) Blob(ctx context.Context, name Name, d digest.Digest, head bool) (Content, error) {
	if err := blobstore.CheckDigest(d); err != nil {
		return Content{}, err
	}
	for range 2 { // a download may commit between the two looks
		if c, ok, err := n.localContent(ctx, name, d, head); err != nil || ok {
			return c, err
		}
		if !n.mirrors(name) && !n.meshed() {
			return Content{}, fmt.Errorf("blob %s@%s: %w", name.Repo, d, blobstore.ErrNotFound)
		}
		if head {
			// A download whose size is known answers at once; one that has
			// none yet may be failing (the upstream down) and is not waited
			// for: a HEAD asks the fleet and upstream itself.
			if dl := n.inflight(d); dl != nil {
				if st := dl.state(); st.err == nil && st.size >= 0 {
					size, kind, err := dl.waitSize(ctx) // known: no wait
					return Content{Digest: d, Size: size, Source: kind, Arriving: true}, err
				}
			}
			return n.statElsewhere(ctx, name, d)
		}
		dl, onDisk := n.join(ctx, name, d)
		if dl == nil {
			continue // committed meanwhile: serve it from the store
		}
		size, kind, err := dl.waitSize(ctx)
		if err != nil {
			return Content{}, err
		}
		if onDisk {
			kind = "local" // it was on local disk, verified, when this reader came
		}
		c := Content{Digest: d, Size: size, Source: kind, Arriving: !onDisk}
		if !head {
			c.Body = n.track(d, &follower{ctx: ctx, dl: dl, store: n.store})
		}
		return c, nil
	}
	return Content{}, fmt.Errorf("blob %s@%s: %w", name.Repo, d, blobstore.ErrNotFound)
}

func (n *Node) localContent(ctx context.Context, name Name, d digest.Digest, head bool) (Content, bool, error) {
	b, ok, err := n.localBlob(ctx, name, d)
	if err != nil || !ok {
		return Content{}, false, err
	}
	info, err := n.store.Stat(ctx, d)
	if err != nil {
		b.Close()
		return Content{}, false, notFoundIsMiss(err)
	}
	n.store.Touch(ctx, d) // a local hit: recently used, for eviction
	c := Content{Digest: d, Size: info.Size, Source: "local", Body: b}
	if head {
		b.Close()
		c.Body = nil
	}
	return c, true, nil
}

func (n *Node) inflight(d digest.Digest) *download {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.downloads[d]
}

// join returns the download of d in flight, starting one if needed, or nil
// when the blob is (now) in the store. onDisk: the download was already
// running and had verified every byte when this reader came.
func (n *Node) join(ctx context.Context, name Name, d digest.Digest) (dl *download, onDisk bool) {
	return n.joinAs(ctx, name, d, false)
}

// joinAs is join; origin: a new download fetches from upstream from the
// start (the fleet asked this node to).
func (n *Node) joinAs(ctx context.Context, name Name, d digest.Digest, origin bool) (dl *download, onDisk bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	// A download that has failed and is on its way out is not joined: this
	// request starts afresh (the upstream may be back, or down now).
	if dl := n.downloads[d]; dl != nil && dl.state().err == nil {
		dl.addKey(n.Key(name))
		s := dl.state()
		return dl, s.verified || s.committed
	}
	if _, err := n.store.Stat(ctx, d); err == nil {
		return nil, false
	}
	dctx, cancel := context.WithCancel(context.Background())
	dl = newDownload(d, cancel)
	dl.addKey(n.Key(name))
	if n.meshed() {
		dl.sw = newSwarm(d, n.opts.SwarmWindow)
		dl.sw.origin = origin
	}
	if n.closed {
		cancel()
		dl.finish(errors.New("node is shutting down"))
		return dl, false
	}
	n.downloads[d] = dl
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer cancel()
		err := n.fetch(dctx, dl, name)
		if err != nil {
			n.log.Warn("blob download failed", slog.String("digest", d.String()),
				slog.String("repo", name.Repo), slog.String("err", err.Error()))
		}
		dl.finish(err)
		n.mu.Lock()
		if n.downloads[d] == dl { // a failed one may have been replaced already
			delete(n.downloads, d)
		}
		n.mu.Unlock()
	}()
	return dl, false
}

// statElsewhere answers a HEAD for a blob the node lacks without fetching
// it: a holder in the fleet, else upstream.
func (n *Node) statElsewhere(ctx context.Context, name Name, d digest.Digest) (Content, error) {
	for _, h := range n.holders(ctx, d.String(), 1) {
		if size, err := n.peers.Stat(ctx, h.DataURL, d); err == nil {
			return Content{Digest: d, Size: size, Source: "peer"}, nil
		}
	}
	if !n.mirrors(name) {
		return Content{}, fmt.Errorf("blob %s@%s: %w", name.Repo, d, blobstore.ErrNotFound)
	}
	// A HEAD gets the upstream's answer within the tag budget, else
	// "unknown" (unknownToHead).
	sctx, cancel := context.WithTimeout(ctx, n.opts.TagTimeout)
	size, err := n.up.StatBlob(sctx, name.NS, name.Repo, d)
	cancel()
	if err != nil {
		what := fmt.Sprintf("blob %s@%s", name.Repo, d)
		return Content{}, n.unknownToHead(ctx, what, upstreamErr(what, err))
	}
	return Content{Digest: d, Size: size, Source: "upstream"}, nil
}

// unknownToHead turns an upstream failure into "unknown" for a HEAD of
// what the node lacks (a blob, a manifest, a tag): a client about to push
// asks for each first and pushes what is unknown, so pushes work with the
// upstream down. A GET still answers 503. Other errors pass unchanged.
func (n *Node) unknownToHead(ctx context.Context, what string, err error) error {
	if !errors.Is(err, ErrUpstream) || ctx.Err() != nil {
		return err
	}
	n.log.LogAttrs(ctx, slog.LevelDebug, "upstream failed a HEAD; answering unknown",
		slog.String("what", what), slog.String("err", err.Error()))
	return fmt.Errorf("%s: %w (upstream: %v)", what, blobstore.ErrNotFound, err)
}
