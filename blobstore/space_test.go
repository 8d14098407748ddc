package blobstore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// commitBlob stores data in f and returns its digest.
func commitBlob(t *testing.T, f *Files, data []byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	d := digest.FromBytes(data)
	w, err := f.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(ctx, int64(len(data)), d); err != nil {
		t.Fatal(err)
	}
	return d
}

// fillDisk makes the store's file system report free bytes, until the test
// ends.
func fillDisk(t *testing.T, free *atomic.Int64) {
	real := freeBytes
	freeBytes = func(string) (int64, error) { return free.Load(), nil }
	t.Cleanup(func() { freeBytes = real })
}

// TestFullDisk: near full, the store stops taking blob bytes, then index
// writes (badger would die of SIGBUS writing its memory-mapped memtable),
// says so with ErrNoSpace, makes nothing visible, and still removes, so
// space can come back. A blob whose bytes got in still gets its record.
// Opening a store on a full disk is a clear error; one that stopped at the
// index floor still opens.
func TestFullDisk(t *testing.T) {
	ctx := context.Background()
	var free atomic.Int64
	free.Store(1 << 40)
	fillDisk(t, &free)
	dir := t.TempDir()
	f, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := commitBlob(t, f, bytes.Repeat([]byte("b"), 64<<10))
	if err := f.Link(ctx, "app", d); err != nil {
		t.Fatal(err)
	}
	if err := f.Tag(ctx, "app", "v1", d); err != nil {
		t.Fatal(err)
	}
	fill := func(n int64) { // the disk changes: the store's next write looks
		free.Store(n)
		f.space.mu.Lock()
		f.space.at = time.Time{}
		f.space.mu.Unlock()
	}

	// A blob's bytes go in above the blob floor; its commit takes the disk
	// below it, and still records the blob.
	last := bytes.Repeat([]byte("l"), 64<<10)
	w, err := f.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fill(blobFloor + 128<<10)
	if _, err := w.Write(last); err != nil {
		t.Fatal(err)
	}
	fill(blobFloor - 1)
	if _, err := w.Commit(ctx, int64(len(last)), digest.FromBytes(last)); err != nil {
		t.Fatalf("commit of a blob whose bytes got in: %v", err)
	}
	if _, err := f.Stat(ctx, digest.FromBytes(last)); err != nil {
		t.Fatalf("stat of the committed blob: %v", err)
	}

	fill(blobFloor + 100<<10) // 100 KiB left above the floor
	more := bytes.Repeat([]byte("m"), 256<<10)
	w, err = f.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(more); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "short of full") {
		t.Fatalf("write past the floor: %v, want ErrNoSpace saying where the node stops", err)
	}
	fill(1 << 40) // even with room again, the writer stays failed
	if _, err := w.Write(more[:10]); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write after a failed write: %v, want the same failure", err)
	}
	if _, err := w.Commit(ctx, -1, digest.FromBytes(more)); err == nil {
		t.Fatal("a writer that failed committed")
	}
	if _, err := f.Stat(ctx, digest.FromBytes(more)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stat of the failed blob: %v, want not found", err)
	}

	fill(indexFloor - 1)
	if err := f.Tag(ctx, "app", "v2", d); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("tag on a full disk: %v, want ErrNoSpace", err)
	}
	if err := f.Untag(ctx, "app", "v1"); err != nil {
		t.Fatalf("untag on a full disk: %v", err)
	}
	if err := f.Unlink(ctx, "app", d); err != nil {
		t.Fatalf("unlink on a full disk: %v", err)
	}
	if err := f.Delete(ctx, d); err != nil && !errors.Is(err, ErrNotFound) { // the last unlink may have removed it
		t.Fatalf("delete on a full disk: %v", err)
	}
	if _, err := f.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stat after delete on a full disk: %v, want not found", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = Open(dir, nil) // stopped at the index floor: starts
	if err != nil {
		t.Fatalf("open at the index floor: %v", err)
	}
	f.Close()
	free.Store(openFloor - 1)
	if _, err := Open(dir, nil); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "free some space") {
		t.Fatalf("open on a full disk: %v, want ErrNoSpace telling what to do", err)
	}
}

// TestFreeSpaceIsNotAskedPerWrite: small writes (an upload's 32 KiB
// copies) do not each cost a statfs: one reading lets half the room above
// the floor go.
func TestFreeSpaceIsNotAskedPerWrite(t *testing.T) {
	var calls atomic.Int64
	real := freeBytes
	freeBytes = func(string) (int64, error) { calls.Add(1); return 1 << 40, nil }
	t.Cleanup(func() { freeBytes = real })
	s := space{dir: t.TempDir()}
	for range 1000 {
		if err := s.room(32<<10, blobFloor); err != nil {
			t.Fatal(err)
		}
	}
	if n := calls.Load(); n > 2 {
		t.Errorf("1000 writes of 32 KiB asked for the free space %d times, want once or twice", n)
	}
}

// TestAccessesKeptWhileTheDiskIsFull: touches that a full disk keeps out of
// the index stay pending and are written once there is space again
// (eviction would otherwise take images in use).
func TestAccessesKeptWhileTheDiskIsFull(t *testing.T) {
	ctx := context.Background()
	var free atomic.Int64
	free.Store(1 << 40)
	fillDisk(t, &free)
	f, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := commitBlob(t, f, []byte("touched"))
	later := time.Now().Add(time.Hour).Truncate(time.Second)
	f.access.record(d, later)

	free.Store(indexFloor - 1)
	f.space.mu.Lock()
	f.space.at = time.Time{}
	f.space.mu.Unlock()
	if err := f.flushAccess(); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("flush on a full disk: %v, want ErrNoSpace", err)
	}
	if at, ok := f.access.pendingFor(d); !ok || !at.Equal(later) {
		t.Fatalf("after a failed flush the touch is pending %v at %s, want kept at %s", ok, at, later)
	}
	free.Store(1 << 40)
	if err := f.flushAccess(); err != nil {
		t.Fatal(err)
	}
	if m, err := f.Meta(ctx, d); err != nil || !m.Accessed.Equal(later) {
		t.Fatalf("recorded access %v (%v), want %s", m.Accessed, err, later)
	}
}
