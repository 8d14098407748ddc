package blobstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// flushEvery is how often touches kept in memory are written to the index.
// Eviction needs minutes of precision at most; a crash loses at most this
// much recency, never content.
const flushEvery = 30 * time.Second

// flushBatch bounds the records one index transaction rewrites.
const flushBatch = 1000

// accessLog keeps the last access of touched blobs in memory until the next
// flush, so serving a blob never costs an index write.
type accessLog struct {
	mu      sync.Mutex
	pending map[digest.Digest]time.Time
	once    sync.Once
	stop    chan struct{}
	done    chan struct{}
}

// start runs the periodic flush until stopAndFlush.
func (a *accessLog) start(f *Files) {
	a.stop, a.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(a.done)
		t := time.NewTicker(flushEvery)
		defer t.Stop()
		full := false // said so already: once, not every flush
		for {
			select {
			case <-a.stop:
				return
			case <-t.C:
				err := f.flushAccess()
				switch {
				case errors.Is(err, ErrNoSpace) && full:
				case err != nil:
					f.log.Warn("record blob accesses; kept for the next try", "err", err)
					full = errors.Is(err, ErrNoSpace)
				case full:
					f.log.Info("blob accesses recorded again")
					full = false
				}
			}
		}
	}()
}

// stopAndFlush ends the periodic flush and writes what is pending.
func (a *accessLog) stopAndFlush(f *Files) {
	a.once.Do(func() {
		if a.stop != nil {
			close(a.stop)
			<-a.done
		}
		if err := f.flushAccess(); err != nil {
			f.log.Warn("record blob accesses", "err", err)
		}
	})
}

func (a *accessLog) record(d digest.Digest, t time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pending == nil {
		a.pending = map[digest.Digest]time.Time{}
	}
	if t.After(a.pending[d]) {
		a.pending[d] = t
	}
}

func (a *accessLog) pendingFor(d digest.Digest) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.pending[d]
	return t, ok
}

// snapshot copies the pending touches.
func (a *accessLog) snapshot() map[digest.Digest]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[digest.Digest]time.Time, len(a.pending))
	for d, t := range a.pending {
		out[d] = t
	}
	return out
}

// take removes and returns the pending touches.
func (a *accessLog) take() map[digest.Digest]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pending
	a.pending = nil
	return p
}

// Touch records that blob d was used now; the index learns it at the next
// flush (every flushEvery, and on Close).
func (f *Files) Touch(_ context.Context, d digest.Digest) {
	if CheckDigest(d) != nil {
		return
	}
	f.access.record(d, f.now())
}

// SetClock replaces the store's clock (creation and access times), for
// tests. Call it before the store is used.
func (f *Files) SetClock(now func() time.Time) { f.now = now }

// LastAccess reports when blob d was last committed or touched.
func (f *Files) LastAccess(ctx context.Context, d digest.Digest) (time.Time, error) {
	if err := CheckDigest(d); err != nil {
		return time.Time{}, err
	}
	m, err := f.Meta(ctx, d)
	return m.Accessed, err
}

// WalkAccess calls fn for every committed blob with its last access, in
// digest order, reading the index in pages (fn may change the store).
func (f *Files) WalkAccess(ctx context.Context, fn func(Info, time.Time) error) error {
	pending := f.access.snapshot()
	pfx := prefix(kindMeta)
	start := pfx
	type rec struct {
		info Info
		at   time.Time
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var recs []rec
		err := f.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
			defer it.Close()
			for it.Seek(start); it.Valid() && len(recs) < f.page; it.Next() {
				d := digest.Digest(it.Item().Key()[len(pfx):])
				m, err := getMeta(txn, d)
				if err != nil {
					return err
				}
				at := m.Accessed
				if t, ok := pending[d]; ok && t.After(at) {
					at = t
				}
				recs = append(recs, rec{Info{Digest: d, Size: m.Size}, at})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("walk: %w", err)
		}
		for _, r := range recs {
			if err := fn(r.info, r.at); err != nil {
				return err
			}
		}
		if len(recs) < f.page {
			return nil
		}
		start = append(key(kindMeta, string(recs[len(recs)-1].info.Digest)), 0)
	}
}

// flushAccess writes the pending touches to the index, in batches. Blob
// metadata can be rebuilt (reconcile), so these writes skip the sync.
func (f *Files) flushAccess() error {
	pending := f.access.take()
	if len(pending) == 0 {
		return nil
	}
	ds := make([]digest.Digest, 0, len(pending))
	for d := range pending {
		ds = append(ds, d)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.db.IsClosed() {
		return nil
	}
	for i := 0; i < len(ds); i += flushBatch {
		batch := ds[i:min(i+flushBatch, len(ds))]
		err := f.update(func(txn *badger.Txn) error {
			for _, d := range batch {
				m, err := getMeta(txn, d)
				if err != nil {
					continue // deleted since: nothing to record
				}
				if t := pending[d]; t.After(m.Accessed) {
					m.Accessed = t
					if err := putMeta(txn, d, m); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			// Kept for the next flush (a full disk may get space back):
			// losing them would make eviction take images in use.
			for _, d := range ds[i:] {
				f.access.record(d, pending[d])
			}
			return fmt.Errorf("flush %d accesses: %w", len(ds)-i, err)
		}
	}
	return nil
}
