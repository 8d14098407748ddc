package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// maxAttempts bounds how often one download asks upstream after a broken
// body (each retry resumes at the offset already written).
const maxAttempts = 3

// download is one blob being fetched into the store. Followers read the bytes
// already written while it goes on.
type download struct {
	d      digest.Digest
	cancel context.CancelFunc

	mu      sync.Mutex
	size    int64  // -1 until the first source said
	source  string // kind of the first source that answered
	written int64
	// verified: every byte is written and hashes to the digest; the last
	// byte may go to readers before the durable commit.
	verified bool
	// committed: the blob is in the store; read it there.
	committed bool
	done      bool
	err       error
	changed   chan struct{} // closed and replaced on every change

	wmu sync.RWMutex // ReadAt against Commit/Cancel
	w   blobstore.Writer

	keys map[string]bool // repositories (store keys) that asked: all are linked (under mu)

	// sw is the piece state when the node swarms in a fleet; nil for a
	// lone node's sequential download. run is set once the swarm started.
	sw  *swarm
	run *swarmRun // under mu
}

func (dl *download) setRun(r *swarmRun) {
	dl.mu.Lock()
	dl.run = r
	dl.mu.Unlock()
}

func (dl *download) getRun() *swarmRun {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return dl.run
}

// addKey records a repository that wants the blob.
func (dl *download) addKey(key string) {
	dl.mu.Lock()
	dl.keys[key] = true
	dl.mu.Unlock()
}

func (dl *download) linkKeys() []string {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	keys := make([]string, 0, len(dl.keys))
	for k := range dl.keys {
		keys = append(keys, k)
	}
	return keys
}

func newDownload(d digest.Digest, cancel context.CancelFunc) *download {
	return &download{d: d, cancel: cancel, size: -1, changed: make(chan struct{}), keys: map[string]bool{}}
}

// notifyLocked wakes every waiting follower; dl.mu must be held.
func (dl *download) notifyLocked() {
	close(dl.changed)
	dl.changed = make(chan struct{})
}

func (dl *download) setSize(size int64, source string) {
	dl.mu.Lock()
	dl.size, dl.source = size, source
	dl.notifyLocked()
	dl.mu.Unlock()
}

func (dl *download) advance(written int64) {
	dl.mu.Lock()
	dl.written = written
	dl.notifyLocked()
	dl.mu.Unlock()
}

func (dl *download) markVerified() {
	dl.mu.Lock()
	dl.verified = true
	dl.notifyLocked()
	dl.mu.Unlock()
}

func (dl *download) markCommitted() {
	dl.mu.Lock()
	dl.committed = true
	dl.notifyLocked()
	dl.mu.Unlock()
}

func (dl *download) finish(err error) {
	dl.mu.Lock()
	dl.done, dl.err = true, err
	dl.notifyLocked()
	dl.mu.Unlock()
}

type snapshot struct {
	size, written             int64
	verified, committed, done bool
	err                       error
	changed                   <-chan struct{}
}

func (dl *download) state() snapshot {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return snapshot{dl.size, dl.written, dl.verified, dl.committed, dl.done, dl.err, dl.changed}
}

// waitSize waits until the blob's size is known or the download failed, and
// tells which kind of source answered.
func (dl *download) waitSize(ctx context.Context) (int64, string, error) {
	for {
		s := dl.state()
		switch {
		case s.err != nil:
			return 0, "", s.err
		case s.size >= 0:
			dl.mu.Lock()
			defer dl.mu.Unlock()
			return s.size, dl.source, nil
		}
		select {
		case <-s.changed:
		case <-ctx.Done():
			return 0, "", ctx.Err()
		}
	}
}

// errReleased: the writer is gone (committed or failed); look at the state again.
var errReleased = errors.New("download buffer released")

// readAt reads written, not yet committed bytes.
func (dl *download) readAt(p []byte, off int64) (int, error) {
	dl.wmu.RLock()
	defer dl.wmu.RUnlock()
	if dl.w == nil {
		return 0, errReleased
	}
	k, err := dl.w.ReadAt(p, off)
	if errors.Is(err, blobstore.ErrClosed) { // committing: read the stored file soon
		err = errReleased
	}
	return k, err
}

// fetch copies the blob into a store writer from the first source that
// answers (holders in the fleet, then upstream); when a source breaks
// mid-body the next one continues at the offset already written. The blob is
// committed, and so visible, only once its size and digest verified.
func (n *Node) fetch(ctx context.Context, dl *download, name Name) (err error) {
	w, err := n.ingest.NewWriter(ctx)
	if err != nil {
		return err
	}
	dl.wmu.Lock()
	dl.w = w
	dl.wmu.Unlock()
	defer func() {
		dl.wmu.Lock()
		if err != nil {
			w.Cancel()
		}
		dl.w = nil
		dl.wmu.Unlock()
	}()

	if dl.sw != nil {
		return n.fetchSwarm(ctx, dl, w, name)
	}
	what := fmt.Sprintf("blob %s@%s", name.Repo, dl.d)
	srcs := n.blobSources(ctx, name, dl.d)
	size := int64(-1)
	var errs []sourceErr
	var peersUsed []string // peers whose bytes went in: blamed if the blob does not verify
	upstreamRetries := 0
	refreshed := false
	gone := map[string]bool{} // peers dropped from this download
	for size < 0 || w.Size() < size {
		if len(srcs) == 0 {
			if refreshed || w.Size() == 0 {
				break
			}
			// Every source failed mid-blob: holders that announced since the
			// start (or whose announcement was still on its way) may finish it.
			refreshed = true
			for _, src := range n.blobSources(ctx, name, dl.d) {
				if src.kind != "peer" || !gone[src.from] {
					srcs = append(srcs, src)
				}
			}
			if upstreamRetries >= maxAttempts-1 { // upstream already had its tries
				srcs = slices.DeleteFunc(srcs, func(s source) bool { return s.kind == "upstream" })
			}
			if len(srcs) == 0 {
				break
			}
		}
		r, failed := openFirst(ctx, srcs, w.Size())
		errs = append(errs, failed...)
		drop := map[int]bool{}
		for _, f := range failed {
			drop[f.i] = true
			if f.i >= 0 && srcs[f.i].kind == "peer" {
				gone[srcs[f.i].from] = true
			}
			n.m.fetches.WithLabelValues(f.kind, "error").Inc()
		}
		if r.body == nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", what, ctx.Err())
			}
			srcs = without(srcs, drop)
			continue
		}
		src := srcs[r.i]
		n.m.fetches.WithLabelValues(src.kind, "ok").Inc()
		if src.kind == "peer" {
			peersUsed = append(peersUsed, src.from)
		}
		if size < 0 && r.total >= 0 {
			size = r.total
			dl.setSize(size, src.kind)
		}
		if r.total != size {
			err = fmt.Errorf("size %d, want %d", r.total, size)
			n.bad.add(dl.d, peersUsed) // one of them, or this source, lied about the size
		} else {
			err = n.copyBody(ctx, dl, w, r.body, size, src.kind, r.cancel)
		}
		r.body.Close()
		r.cancel()
		if err == nil && w.Size() < size {
			err = io.ErrUnexpectedEOF
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w: %v", what, ctx.Err(), err)
		}
		if errors.As(err, new(storeError)) {
			return fmt.Errorf("%s: %w", what, err) // this node's disk, not the source: no other source helps
		}
		errs = append(errs, sourceErr{r.i, src.kind, fmt.Errorf("%s: %w", src.from, err)})
		n.log.Debug("source broke, trying the next", "digest", dl.d, "source", src.kind, "from", src.from, "offset", w.Size(), "err", err)
		if src.kind == "upstream" && upstreamRetries < maxAttempts-1 {
			upstreamRetries++
		} else {
			drop[r.i] = true
			if src.kind == "peer" {
				gone[src.from] = true
			}
		}
		srcs = without(srcs, drop)
	}
	if size < 0 || w.Size() != size {
		return classify(what, errs)
	}
	return n.commitDownload(ctx, dl, w, size, peersUsed, what)
}

// commitDownload verifies and commits a fully written download, announces
// it and links every repository that asked for it. peersUsed are blamed if
// the bytes do not verify.
func (n *Node) commitDownload(ctx context.Context, dl *download, w blobstore.Writer, size int64, peersUsed []string, what string) error {
	if w.Sum() == dl.d { // sha256 verified: readers need not wait for the fsync
		dl.markVerified()
	}

	_, err := w.Commit(ctx, size, dl.d) // followers read on until it closes the file
	dl.wmu.Lock()
	dl.w = nil // followers now wait for markCommitted (after the link)
	dl.wmu.Unlock()
	if err != nil && !errors.Is(err, blobstore.ErrDigestMismatch) && !errors.Is(err, blobstore.ErrSizeMismatch) {
		return fmt.Errorf("%s: %w", what, err) // this node's disk (full, failing): nobody to blame
	}
	if err != nil {
		n.bad.add(dl.d, peersUsed) // the next fetch of this blob skips them
		return fmt.Errorf("%s: %w: %v", what, ErrUpstream, err)
	}
	if dl.sw != nil {
		if hs := dl.sw.allHashes(); hs != nil {
			n.hashes.put(dl.d, hs)
		}
		dl.sw.finish()
	}
	n.announce(dl.d)
	for _, key := range dl.linkKeys() {
		// The blob is verified and stored: readers get it whole even if a
		// repository's link fails (a later request links it again, or
		// fetches it for a registry this node does not mirror).
		if err := n.store.Link(ctx, key, dl.d); err != nil {
			n.log.Warn("link a stored blob into its repository", "blob", dl.d, "repo", key, "err", err)
		}
	}
	dl.markCommitted()
	n.m.downloads.Inc()
	return nil
}

// storeError is a failed write into this node's store (a full disk), as
// opposed to a source that failed.
type storeError struct{ error }

func (e storeError) Unwrap() error { return e.error }

// copyBody writes body into w, telling followers after every chunk. A body
// that stalls for IdleTimeout, or runs past size, fails.
func (n *Node) copyBody(ctx context.Context, dl *download, w blobstore.Writer, body io.Reader, size int64, kind string, abort context.CancelFunc) error {
	stalled := time.AfterFunc(n.opts.IdleTimeout, abort)
	defer stalled.Stop()
	buf := make([]byte, 256<<10)
	limited := io.LimitReader(n.throttled(ctx, body), size-w.Size()+1) // --max-download-rate
	for {
		k, rerr := limited.Read(buf)
		if k > 0 {
			stalled.Reset(n.opts.IdleTimeout)
			if w.Size()+int64(k) > size {
				return fmt.Errorf("upstream sent more than %d bytes", size)
			}
			if _, err := w.Write(buf[:k]); err != nil {
				return storeError{err}
			}
			n.m.fetchedBytes.WithLabelValues(kind).Add(float64(k))
			dl.advance(w.Size())
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
