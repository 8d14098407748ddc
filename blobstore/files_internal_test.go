package blobstore

import (
	"context"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// TestAccessRecorded: Touch moves a blob's last access forward at once in
// what the store reports, writes the index only when flushed (Close here),
// and the times survive a reopen. Open is not an access.
func TestAccessRecorded(t *testing.T) {
	dir := t.TempDir()
	f, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := t0
	f.now = func() time.Time { return clock }
	ctx := context.Background()
	b := []byte("some layer")
	d := commitBlob(t, f, b)
	indexed := func() time.Time {
		var m Meta
		if err := f.db.View(func(txn *badger.Txn) (err error) { m, err = getMeta(txn, d); return err }); err != nil {
			t.Fatal(err)
		}
		return m.Accessed
	}
	steps := []struct {
		name     string
		advance  time.Duration
		touch    bool
		accessed time.Time
	}{
		{"open only", time.Hour, false, t0},
		{"touch", time.Minute, true, t0.Add(time.Hour + time.Minute)},
		{"touch again", time.Second, true, t0.Add(time.Hour + time.Minute + time.Second)},
	}
	for _, st := range steps {
		clock = clock.Add(st.advance)
		rc, err := f.Open(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if st.touch {
			f.Touch(ctx, d)
		}
		m, err := f.Meta(ctx, d)
		if err != nil || !m.Created.Equal(t0) || !m.Accessed.Equal(st.accessed) || m.Size != int64(len(b)) {
			t.Errorf("%s: Meta = %+v, %v; want created %v, accessed %v", st.name, m, err, t0, st.accessed)
		}
		if at, err := f.LastAccess(ctx, d); err != nil || !at.Equal(st.accessed) {
			t.Errorf("%s: LastAccess = %v, %v; want %v", st.name, at, err, st.accessed)
		}
		if got := indexed(); !got.Equal(t0) {
			t.Errorf("%s: the index was written before a flush: accessed %v", st.name, got)
		}
	}
	want := t0.Add(time.Hour + time.Minute + time.Second)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f, err = Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if m, err := f.Meta(ctx, d); err != nil || !m.Accessed.Equal(want) {
		t.Errorf("Meta after reopen = %+v, %v; want accessed %v", m, err, want)
	}
}

// TestWalkPages: Walk reads the index in pages and may change the store
// from fn (a GC deleting what it walks).
func TestWalkPages(t *testing.T) {
	f, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.page = 3
	ctx := context.Background()
	want := map[digest.Digest]bool{}
	for i := range 10 {
		b := []byte{byte(i)}
		w, _ := f.NewWriter(ctx)
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
		info, err := w.Commit(ctx, 1, digest.FromBytes(b))
		if err != nil {
			t.Fatal(err)
		}
		want[info.Digest] = true
	}
	var prev digest.Digest
	err = f.Walk(ctx, func(i Info) error {
		if !want[i.Digest] || i.Digest <= prev {
			t.Errorf("Walk gave %s after %s (unknown, repeated or out of order)", i.Digest, prev)
		}
		prev = i.Digest
		delete(want, i.Digest)
		return f.Delete(ctx, i.Digest)
	})
	if err != nil || len(want) != 0 {
		t.Errorf("Walk: %v, %d blobs not visited", err, len(want))
	}
	if b, n, _ := f.Usage(ctx); b != 0 || n != 0 {
		t.Errorf("Usage after deleting all = %d, %d", b, n)
	}
}
