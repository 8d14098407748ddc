package blobstore

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/dgraph-io/badger/v4"
	"github.com/dustin/go-humanize"
)

// ErrNoSpace: the file system of the store is (nearly) full.
var ErrNoSpace = errors.New("storage full")

// keepFree is the space the store leaves free for its index. badger keeps
// its memtable in a memory-mapped sparse file (8 MB memtables, two of them,
// each file twice that): writing into a page the file system cannot back
// kills the process with SIGBUS, where a write(2) would have failed with
// ENOSPC. So blob bytes and index writes stop this far from full.
const keepFree = 48 << 20

// room returns ErrNoSpace if writing n more bytes would leave less than
// keepFree on the store's file system.
func (f *Files) room(n int64) error {
	free, err := freeBytes(f.dir)
	if err != nil {
		return nil // not knowing is no reason to refuse; the write tells
	}
	if free-n < keepFree {
		return fmt.Errorf("%s has %s free; the node keeps %s for its index: %w",
			f.dir, humanize.IBytes(uint64(max(free, 0))), humanize.IBytes(keepFree), ErrNoSpace)
	}
	return nil
}

// freeBytes is what an unprivileged writer may still use under dir (a
// variable: tests fill the disk).
var freeBytes = func(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// update runs fn in an index transaction, unless the disk is too full for
// the index to write safely.
func (f *Files) update(fn func(txn *badger.Txn) error) error {
	if err := f.room(0); err != nil {
		return err
	}
	return f.db.Update(fn)
}

// noSpace marks a failed file write that ran out of space as ErrNoSpace.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}
