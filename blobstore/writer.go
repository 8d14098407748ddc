package blobstore

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// fileWriter fills a temp file in DIR/ingest, hashing sha256 as bytes go in.
type fileWriter struct {
	f    *Files
	name string // temp file path

	wmu  sync.Mutex   // serialises Write (file offset, hash state)
	mu   sync.RWMutex // Write and ReadAt hold it shared; Commit and Cancel exclusively
	file *os.File     // nil once closed
	h    hash.Hash
	size atomic.Int64 // bytes fully written: readers never see beyond it
	// flushed: bytes whose writeback was started (under wmu).
	flushed int64
	// failed: a write failed (under wmu); every later one fails with it,
	// as the file and the hash may disagree.
	failed error
}

// writebackEvery is how many written bytes start an early writeback.
const writebackEvery = 8 << 20

// parallelHashMin: writes this large hash on a second goroutine while the
// bytes go to the file.
const parallelHashMin = 64 << 10

func newFileWriter(f *Files, file *os.File) *fileWriter {
	return &fileWriter{f: f, name: file.Name(), file: file, h: sha256.New()}
}

func (w *fileWriter) Write(p []byte) (int, error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.file == nil {
		return 0, ErrClosed
	}
	if w.failed != nil {
		return 0, w.failed
	}
	if err := w.f.space.room(int64(len(p)), blobFloor); err != nil {
		w.failed = fmt.Errorf("ingest write: %w", err)
		return 0, w.failed
	}
	var n int
	var err error
	if len(p) >= parallelHashMin {
		// Hash on a second core while the same bytes go to the file. A short
		// write leaves the hash ahead of the file: Commit then fails on the
		// digest, and nothing becomes visible.
		hashed := make(chan struct{})
		go func() {
			w.h.Write(p)
			close(hashed)
		}()
		n, err = w.file.Write(p)
		<-hashed
	} else {
		n, err = w.file.Write(p)
		w.h.Write(p[:n])
	}
	size := w.size.Add(int64(n))
	if size-w.flushed >= writebackEvery {
		startWriteback(w.file, w.flushed, size-w.flushed)
		w.flushed = size
	}
	if err != nil {
		w.failed = fmt.Errorf("ingest write: %w", noSpace(err))
		return n, w.failed
	}
	return n, nil
}

// ReadAt reads bytes already written (pread on the temp file, concurrent
// with Write). At the current end it returns io.EOF; the follower of an
// in-flight download waits and asks again. After Commit or Cancel it returns
// ErrClosed: read the committed blob through Store.Open.
func (w *fileWriter) ReadAt(p []byte, off int64) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.file == nil {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("ingest read at %d: negative offset", off)
	}
	end := w.size.Load()
	if off >= end {
		return 0, io.EOF
	}
	short := int64(len(p)) > end-off
	if short {
		p = p[:end-off]
	}
	n, err := w.file.ReadAt(p, off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

func (w *fileWriter) Size() int64 { return w.size.Load() }

func (w *fileWriter) Sum() digest.Digest {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	return digest.NewDigest(digest.SHA256, w.h)
}

// Commit verifies, fsyncs and renames the temp file into place. On any error
// the temp file is removed and nothing becomes visible. Readers keep reading
// while it verifies and fsyncs; only the close and rename exclude them.
func (w *fileWriter) Commit(ctx context.Context, size int64, expected digest.Digest) (Info, error) {
	w.wmu.Lock() // no more writes (Cancel also takes it: the file stays open below)
	defer w.wmu.Unlock()
	w.mu.RLock()
	if w.file == nil {
		w.mu.RUnlock()
		return Info{}, ErrClosed
	}
	n, err := w.verifyAndSync(ctx, size, expected)
	w.mu.RUnlock()

	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		err = w.file.Close()
		w.file = nil
		if err == nil {
			err = w.f.place(w.name, expected, n)
		}
	}
	if err != nil {
		w.discardLocked()
		return Info{}, fmt.Errorf("commit %s: %w", expected, noSpace(err))
	}
	return Info{Digest: expected, Size: n}, nil
}

// verifyAndSync checks size and digest and fsyncs the temp file; it needs
// w.wmu held and w.mu at least shared.
func (w *fileWriter) verifyAndSync(ctx context.Context, size int64, expected digest.Digest) (int64, error) {
	if err := CheckDigest(expected); err != nil {
		return 0, err
	}
	n := w.size.Load()
	if size >= 0 && n != size {
		return 0, fmt.Errorf("got %d bytes, want %d: %w", n, size, ErrSizeMismatch)
	}
	var got digest.Digest
	switch expected.Algorithm() {
	case digest.SHA256:
		got = digest.NewDigest(digest.SHA256, w.h)
	default:
		// Only sha256 is hashed while writing (nearly every blob); others
		// are rehashed from disk.
		var err error
		if got, err = rehash(ctx, w.file, n); err != nil {
			return 0, fmt.Errorf("rehash: %w", err)
		}
	}
	if got != expected {
		return 0, fmt.Errorf("got %s, want %s: %w", got, expected, ErrDigestMismatch)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if err := w.file.Sync(); err != nil {
		return 0, fmt.Errorf("fsync: %w", err)
	}
	return n, nil
}

// discardLocked closes and removes the temp file.
func (w *fileWriter) discardLocked() {
	if w.file != nil {
		_ = w.file.Close()
		w.file = nil
	}
	if err := os.Remove(w.name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		w.f.log.Warn("remove ingest file", "file", w.name, "err", err)
	}
}

// Cancel discards the data; a no-op after Commit or Cancel.
func (w *fileWriter) Cancel() error {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.file == nil {
		return nil
	}
	w.discardLocked()
	return nil
}

// place renames the verified, fsynced temp file to d's path and records its
// metadata. If d already exists the temp file is dropped instead.
func (f *Files) place(tmp string, d digest.Digest, size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	dst := f.path(d)
	if _, err := os.Stat(dst); err == nil {
		// Another writer committed the same content first.
		if err := os.Remove(tmp); err != nil {
			f.log.Warn("remove ingest file", "file", tmp, "err", err)
		}
		return f.ensureMeta(d, size)
	}
	if err := mkdirDurable(filepath.Dir(dst)); err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return fmt.Errorf("fsync blob dir: %w", err)
	}
	f.bytes += size
	f.count++
	return f.ensureMeta(d, size)
}

// ensureMeta records d's metadata, or, when the index has it already (the
// same content committed again), counts the commit as a use.
func (f *Files) ensureMeta(d digest.Digest, size int64) error {
	err := f.update(func(txn *badger.Txn) error {
		now := f.now()
		m, err := getMeta(txn, d)
		switch {
		case errors.Is(err, ErrNotFound):
			m = Meta{Size: size, Created: now}
		case err != nil:
			return err
		}
		m.Accessed = now
		return putMeta(txn, d, m)
	})
	if err != nil {
		return fmt.Errorf("index blob %s: %w", d, err)
	}
	return nil
}

// mkdirDurable creates dir (and missing parents), fsyncing each new entry's
// parent so the directory survives a power cut.
func mkdirDurable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := mkdirDurable(parent); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncDir(parent)
}

// rehash computes the sha512 digest of the first n bytes of r, stopping
// when ctx ends.
func rehash(ctx context.Context, r io.ReaderAt, n int64) (digest.Digest, error) {
	h := sha512.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		k, err := r.ReadAt(buf[:min(int64(len(buf)), n-off)], off)
		h.Write(buf[:k])
		off += int64(k)
		if err != nil && !(errors.Is(err, io.EOF) && off == n) {
			return "", err
		}
	}
	return digest.NewDigest(digest.SHA512, h), nil
}
