package blobstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

var _ Store = (*Files)(nil)

// Files is the on-disk Store:
//
//	DIR/blobs/<alg>/<first 2 hex>/<hex>  verified blobs, named by digest
//	DIR/ingest/                          temp files of writers in progress
//	DIR/index/                           badger: links, manifests, tags, referrers, blob metadata
//
// A blob file appears under its digest name only by rename after its size
// and digest were verified and its bytes fsynced.
type Files struct {
	dir    string
	ingest string
	db     *badger.DB
	log    *slog.Logger
	now    func() time.Time
	page   int // index records Walk reads per transaction
	space  space

	// mu serialises every change of the index and of the blobs tree, so that
	// e.g. a Link cannot race the Unlink that deletes the blob.
	mu    sync.Mutex
	bytes int64 // usage, guarded by mu
	count int64

	access accessLog // touches not yet written to the index (access.go)
}

// Meta is what the index records about a committed blob.
type Meta struct {
	Size     int64
	Created  time.Time
	Accessed time.Time // last commit or Touch (Touch is persisted in batches)
}

// ErrInUse: another process has the store open (its index is locked).
var ErrInUse = errors.New("in use by another process (another imgmesh on the same --data-dir?)")

// Open opens (creating if needed) the store in dir. A nil logger discards.
// Temp files left in DIR/ingest by a crash are removed, and the index is
// reconciled with the blob files (a crash between rename and index write, or
// a file removed by hand).
func Open(dir string, logger *slog.Logger) (*Files, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	f := &Files{
		dir:    dir,
		ingest: filepath.Join(dir, "ingest"),
		log:    logger,
		now:    time.Now,
		page:   256,
		space:  space{dir: dir},
	}
	for _, d := range []string{f.ingest, filepath.Join(dir, "blobs"), filepath.Join(dir, "index")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err // callers say which store
		}
	}
	// Opening the index may write into a new memtable file: on a full disk
	// that is a SIGBUS, not an error (see openFloor).
	if err := f.space.room(0, openFloor); err != nil {
		return nil, fmt.Errorf("index: %w; free some space (e.g. remove other files on it) and start again", err)
	}
	db, err := badger.Open(indexOptions(filepath.Join(dir, "index"), logger))
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") { // badger has no typed error for it
			return nil, fmt.Errorf("%w (%v)", ErrInUse, err) // flock may also fail on a file system without it
		}
		return nil, fmt.Errorf("index: %w", err)
	}
	f.db = db
	// The index lock is held now: no other process uses this ingest dir.
	if err := f.cleanIngest(); err != nil {
		_ = db.Close()
		return nil, err
	}
	if err := f.reconcile(); err != nil {
		_ = db.Close()
		return nil, err
	}
	f.access.start(f)
	return f, nil
}

// cleanIngest removes temp files of writers that never finished. Resuming
// partial downloads after a restart (piece bitmaps in the index) is a later
// issue; until then a restart starts those downloads over.
func (f *Files) cleanIngest() error {
	entries, err := os.ReadDir(f.ingest)
	if err != nil {
		return fmt.Errorf("clean ingest: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(f.ingest, e.Name())); err != nil {
			return fmt.Errorf("clean ingest: %w", err)
		}
	}
	if len(entries) > 0 {
		f.log.Info("removed unfinished ingest files", "count", len(entries))
	}
	return nil
}

// path is where blob d lives; d must have passed CheckDigest.
func (f *Files) path(d digest.Digest) string {
	hex := d.Encoded()
	return filepath.Join(f.dir, "blobs", string(d.Algorithm()), hex[:2], hex)
}

// Stat reports a committed blob, or ErrNotFound.
func (f *Files) Stat(_ context.Context, d digest.Digest) (Info, error) {
	if err := CheckDigest(d); err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(f.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return Info{}, fmt.Errorf("blob %s: %w", d, err)
	}
	return Info{Digest: d, Size: fi.Size()}, nil
}

// Open returns the blob as an *os.File (http.ServeContent can sendfile it).
// It does not count as an access: whoever serves the blob calls Touch.
func (f *Files) Open(_ context.Context, d digest.Digest) (Blob, error) {
	if err := CheckDigest(d); err != nil {
		return nil, err
	}
	file, err := os.Open(f.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob %s: %w", d, err)
	}
	return file, nil
}

// Meta returns the index record of blob d, or ErrNotFound. Accessed
// includes touches not yet flushed to the index.
func (f *Files) Meta(_ context.Context, d digest.Digest) (Meta, error) {
	var m Meta
	err := f.db.View(func(txn *badger.Txn) error {
		var err error
		m, err = getMeta(txn, d)
		return err
	})
	if t, ok := f.access.pendingFor(d); ok && err == nil && t.After(m.Accessed) {
		m.Accessed = t
	}
	return m, err
}

// NewWriter starts an ingest into a temp file in DIR/ingest.
func (f *Files) NewWriter(ctx context.Context) (Writer, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	file, err := os.CreateTemp(f.ingest, "ingest-*")
	if err != nil {
		return nil, fmt.Errorf("new writer: %w", err)
	}
	return newFileWriter(f, file), nil
}

// Delete removes blob d and every link, manifest record, tag and referrer
// entry pointing at it.
func (f *Files) Delete(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.deleteLocked(d, true)
}

// deleteLocked removes the blob file first, then its index entries: a crash
// in between leaves index entries without a file, which reconcile drops.
// With mustExist, a missing file is ErrNotFound.
func (f *Files) deleteLocked(d digest.Digest, mustExist bool) error {
	fi, err := os.Stat(f.path(d))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if mustExist {
			return fmt.Errorf("blob %s: %w", d, ErrNotFound)
		}
	case err != nil:
		return fmt.Errorf("delete blob %s: %w", d, err)
	default:
		if err := os.Remove(f.path(d)); err != nil {
			return fmt.Errorf("delete blob %s: %w", d, err)
		}
		f.bytes -= fi.Size()
		f.count--
	}
	if err := f.db.Update(func(txn *badger.Txn) error { return purge(txn, d) }); err != nil { // removing: also on a full disk
		return fmt.Errorf("delete blob %s index: %w", d, err)
	}
	return nil
}

// Walk calls fn for every committed blob, in digest order, until fn returns
// an error. It reads the index in pages, so fn may change the store.
func (f *Files) Walk(ctx context.Context, fn func(Info) error) error {
	pfx := prefix(kindMeta)
	start := pfx
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		var infos []Info
		err := f.db.View(func(txn *badger.Txn) error {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
			defer it.Close()
			for it.Seek(start); it.Valid() && len(infos) < f.page; it.Next() {
				d := digest.Digest(it.Item().Key()[len(pfx):])
				m, err := getMeta(txn, d)
				if err != nil {
					return err
				}
				infos = append(infos, Info{Digest: d, Size: m.Size})
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("walk: %w", err)
		}
		for _, i := range infos {
			if err := fn(i); err != nil {
				return err
			}
		}
		if len(infos) < f.page {
			return nil
		}
		start = append(key(kindMeta, string(infos[len(infos)-1].Digest)), 0)
	}
}

// Usage reports bytes and blob count of committed content.
func (f *Files) Usage(context.Context) (int64, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bytes, f.count, nil
}

// Writable creates, writes and removes a small file in DIR/ingest, and checks
// that the index is open.
func (f *Files) Writable(context.Context) error {
	if f.db.IsClosed() {
		return errors.New("store index closed")
	}
	file, err := os.CreateTemp(f.ingest, "writable-*")
	if err != nil {
		return fmt.Errorf("store not writable: %w", err)
	}
	_, werr := file.Write([]byte{0})
	cerr := file.Close()
	rerr := os.Remove(file.Name())
	if err := errors.Join(werr, cerr, rerr); err != nil {
		return fmt.Errorf("store not writable: %w", err)
	}
	return nil
}

// Close closes the index. Writers still open leave temp files that the next
// Open removes.
func (f *Files) Close() error {
	if f.db.IsClosed() {
		return nil
	}
	f.access.stopAndFlush(f) // touches since the last flush survive a clean stop
	if err := f.db.Close(); err != nil {
		return fmt.Errorf("close store index: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
