package blobstore

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/opencontainers/go-digest"
)

// fillDisk makes the store's file system report free bytes, until the test
// ends.
func fillDisk(t *testing.T, free *atomic.Int64) {
	real := freeBytes
	freeBytes = func(string) (int64, error) { return free.Load(), nil }
	t.Cleanup(func() { freeBytes = real })
}

// TestFullDisk: near full, the store stops taking blob bytes and index
// writes (badger would die of SIGBUS writing its memory-mapped memtable),
// says so with ErrNoSpace, makes nothing visible, and still removes, so
// space can come back. Opening a store on a full disk is a clear error.
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
	data := bytes.Repeat([]byte("b"), 64<<10)
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
	if err := f.Link(ctx, "app", d); err != nil {
		t.Fatal(err)
	}
	if err := f.Tag(ctx, "app", "v1", d); err != nil {
		t.Fatal(err)
	}

	free.Store(keepFree + 100<<10) // 100 KiB left above the floor
	more := bytes.Repeat([]byte("m"), 256<<10)
	w, err = f.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(more); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "keeps") {
		t.Fatalf("write past the floor: %v, want ErrNoSpace saying what the node keeps", err)
	}
	free.Store(1 << 40) // even with room again, the writer stays failed
	if _, err := w.Write(more[:10]); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write after a failed write: %v, want the same failure", err)
	}
	if _, err := w.Commit(ctx, -1, digest.FromBytes(more)); err == nil {
		t.Fatal("a writer that failed committed")
	}
	if _, err := f.Stat(ctx, digest.FromBytes(more)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stat of the failed blob: %v, want not found", err)
	}

	free.Store(keepFree - 1)
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
	if _, err := Open(dir, nil); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "free some space") {
		t.Fatalf("open on a full disk: %v, want ErrNoSpace telling what to do", err)
	}
	free.Store(1 << 40)
	f, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
