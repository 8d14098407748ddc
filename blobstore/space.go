package blobstore

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dustin/go-humanize"
)

// ErrNoSpace: the file system of the store is (nearly) full.
var ErrNoSpace = errors.New("storage full")

// badger keeps its memtable in a memory-mapped sparse file (8 MB
// memtables, two of them, each file twice that): writing into a page the
// file system cannot back kills the process with SIGBUS, where a write(2)
// would have failed with ENOSPC. So the store stops short of full, in
// three steps: blob bytes first, then index writes (a blob that got its
// bytes in still gets its record), and opening the index last (a node
// that stopped at the index floor still starts). Removals never stop.
const (
	blobFloor  = 64 << 20
	indexFloor = 40 << 20
	openFloor  = 24 << 20
)

// recheckEvery bounds how long a free-space reading is trusted.
const recheckEvery = time.Second

// space answers "is there room?" without a statfs per write: after a
// reading it lets half of what is above the blob floor go before it looks
// again (or a second passes: other processes fill disks too).
type space struct {
	dir  string
	mu   sync.Mutex
	left int64 // bytes writable before the next reading
	at   time.Time
}

// room returns ErrNoSpace if writing n more bytes would leave less than
// floor on the store's file system.
func (s *space) room(n, floor int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	// A recent reading left more than n above the blob floor, the highest.
	if n < s.left && time.Since(s.at) < recheckEvery {
		s.left -= n
		return nil
	}
	free, err := freeBytes(s.dir)
	if err != nil {
		return nil // not knowing is no reason to refuse; the write tells
	}
	if free-n < floor {
		s.left = 0
		return fmt.Errorf("%s has %s free; the node stops writing %s short of full: %w",
			s.dir, humanize.IBytes(uint64(max(free, 0))), humanize.IBytes(uint64(floor)), ErrNoSpace)
	}
	s.left, s.at = max((free-blobFloor)/2-n, 0), time.Now()
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
	if err := f.space.room(0, indexFloor); err != nil {
		return err
	}
	return f.db.Update(fn)
}

// noSpace marks a failed file operation that ran out of space as
// ErrNoSpace.
func noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}
