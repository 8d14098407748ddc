package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

func testCommitVisible(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	b := Blob(1, 100_000)
	d := digest.FromBytes(b)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b[:50_000]); err != nil {
		t.Fatal(err)
	}
	WantNotFound(t, s, d)
	if got, want := w.Sum(), digest.FromBytes(b[:50_000]); got != want {
		t.Errorf("Sum of the first half = %s, want %s", got, want)
	}
	if _, err := w.Write(b[50_000:]); err != nil {
		t.Fatal(err)
	}
	if w.Size() != int64(len(b)) {
		t.Errorf("Size = %d, want %d", w.Size(), len(b))
	}
	if w.Sum() != d {
		t.Errorf("Sum = %s, want %s", w.Sum(), d)
	}
	WantNotFound(t, s, d)
	wantUsage(t, s, 0, 0)
	info, err := w.Commit(ctx, int64(len(b)), d)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if info != (blobstore.Info{Digest: d, Size: int64(len(b))}) {
		t.Errorf("Commit = %+v", info)
	}
	if got, err := s.Stat(ctx, d); err != nil || got != info {
		t.Errorf("Stat = %+v, %v; want %+v", got, err, info)
	}
	if !bytes.Equal(ReadAll(t, s, d), b) {
		t.Error("Open returned other bytes than written")
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, blobstore.ErrClosed) {
		t.Errorf("Write after Commit: %v, want ErrClosed", err)
	}
	if _, err := w.Commit(ctx, int64(len(b)), d); !errors.Is(err, blobstore.ErrClosed) {
		t.Errorf("second Commit: %v, want ErrClosed", err)
	}
	if _, err := w.ReadAt(make([]byte, 1), 0); !errors.Is(err, blobstore.ErrClosed) {
		t.Errorf("ReadAt after Commit: %v, want ErrClosed", err)
	}
	if err := w.Cancel(); err != nil {
		t.Errorf("Cancel after Commit: %v", err)
	}
	if !bytes.Equal(ReadAll(t, s, d), b) {
		t.Error("Cancel after Commit changed the blob")
	}
}

func testMismatch(t *testing.T, s blobstore.Store) {
	b := Blob(2, 10_000)
	other := digest.FromBytes(Blob(3, 10_000))
	tests := []struct {
		name     string
		size     int64
		expected digest.Digest
		lookup   digest.Digest // must stay absent
		want     error
	}{
		{"size too big", int64(len(b)) + 1, digest.FromBytes(b), digest.FromBytes(b), blobstore.ErrSizeMismatch},
		{"size too small", int64(len(b)) - 1, digest.FromBytes(b), digest.FromBytes(b), blobstore.ErrSizeMismatch},
		{"sha256 digest", int64(len(b)), other, other, blobstore.ErrDigestMismatch},
		{"sha256 digest any size", -1, other, other, blobstore.ErrDigestMismatch},
		{"sha512 digest", int64(len(b)), SHA512(b[1:]), SHA512(b[1:]), blobstore.ErrDigestMismatch},
		{"unsupported algorithm", int64(len(b)), digest.Digest("md5:" + fmt.Sprintf("%032x", 7)), digest.FromBytes(b), blobstore.ErrUnsupportedDigest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			w, err := s.NewWriter(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(b); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Commit(ctx, tt.size, tt.expected); !errors.Is(err, tt.want) {
				t.Fatalf("Commit: %v, want %v", err, tt.want)
			}
			WantNotFound(t, s, tt.lookup)
			WantNotFound(t, s, digest.FromBytes(b))
			wantUsage(t, s, 0, 0)
			if got := walk(t, s); len(got) != 0 {
				t.Errorf("Walk after failed commit = %v", got)
			}
			if _, err := w.Write(b); !errors.Is(err, blobstore.ErrClosed) {
				t.Errorf("Write after failed Commit: %v, want ErrClosed", err)
			}
			if err := w.Cancel(); err != nil {
				t.Errorf("Cancel after failed Commit: %v", err)
			}
		})
	}
}

func testSHA512(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	b := Blob(4, 3<<20+17) // more than one rehash buffer
	d := PutAs(t, s, b, SHA512(b))
	if info, err := s.Stat(ctx, d); err != nil || info.Size != int64(len(b)) {
		t.Errorf("Stat = %+v, %v", info, err)
	}
	if !bytes.Equal(ReadAll(t, s, d), b) {
		t.Error("sha512 blob reads back different bytes")
	}
	WantNotFound(t, s, digest.FromBytes(b)) // stored under the sha512 name only
	if got := walk(t, s); len(got) != 1 || got[0].Digest != d {
		t.Errorf("Walk = %v, want [%s]", got, d)
	}
}

func testEmptyBlob(t *testing.T, s blobstore.Store) {
	d := Put(t, s, nil)
	if d != digest.FromBytes(nil) {
		t.Fatal(d)
	}
	if info, err := s.Stat(context.Background(), d); err != nil || info.Size != 0 {
		t.Errorf("Stat = %+v, %v", info, err)
	}
	if got := ReadAll(t, s, d); len(got) != 0 {
		t.Errorf("empty blob read %d bytes", len(got))
	}
}

func testCancel(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	b := Blob(5, 5000)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Cancel(); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	if err := w.Cancel(); err != nil {
		t.Errorf("second Cancel: %v", err)
	}
	if _, err := w.Commit(ctx, int64(len(b)), digest.FromBytes(b)); !errors.Is(err, blobstore.ErrClosed) {
		t.Errorf("Commit after Cancel: %v, want ErrClosed", err)
	}
	if _, err := w.ReadAt(make([]byte, 1), 0); !errors.Is(err, blobstore.ErrClosed) {
		t.Errorf("ReadAt after Cancel: %v, want ErrClosed", err)
	}
	WantNotFound(t, s, digest.FromBytes(b))
	wantUsage(t, s, 0, 0)
}

// testReadAtFollows writes in steps and reads each step back before the next
// one is written: bytes are readable while the ingest goes on, and never
// beyond what was written.
func testReadAtFollows(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	b := Blob(6, 64<<10)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	buf := make([]byte, len(b))
	if n, err := w.ReadAt(buf, 0); n != 0 || !errors.Is(err, io.EOF) {
		t.Errorf("ReadAt on empty writer = %d, %v; want 0, EOF", n, err)
	}
	const step = 10_000
	for off := 0; off < len(b); off += step {
		end := min(off+step, len(b))
		if _, err := w.Write(b[off:end]); err != nil {
			t.Fatal(err)
		}
		// Ask for more than written: get exactly what was written, then EOF.
		n, err := w.ReadAt(buf, int64(off))
		if n != end-off || !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt(%d) = %d, %v; want %d, EOF", off, n, err, end-off)
		}
		if !bytes.Equal(buf[:n], b[off:end]) {
			t.Fatalf("ReadAt(%d) returned other bytes", off)
		}
		if n, err := w.ReadAt(buf[:end], 0); n != end || err != nil {
			t.Fatalf("ReadAt(0, %d) = %d, %v", end, n, err)
		}
		if n, err := w.ReadAt(buf, int64(end)); n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt past end = %d, %v; want 0, EOF", n, err)
		}
	}
	if _, err := w.Commit(ctx, int64(len(b)), digest.FromBytes(b)); err != nil {
		t.Fatal(err)
	}
}

// testReadAtConcurrent runs a follower goroutine that reads the writer while
// another goroutine writes, as a node serves a download in flight.
func testReadAtConcurrent(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	b := Blob(7, 1<<20)
	w, err := s.NewWriter(ctx)
	if err != nil {
		t.Fatal(err)
	}
	progress := make(chan int64, 1) // latest size written; closed at the end
	go func() {
		defer close(progress)
		for off := 0; off < len(b); off += 4096 {
			if _, err := w.Write(b[off:min(off+4096, len(b))]); err != nil {
				t.Error(err)
				return
			}
			select { // keep only the newest
			case <-progress:
			default:
			}
			progress <- w.Size()
		}
	}()
	got := make([]byte, 0, len(b))
	buf := make([]byte, 3000)
	for len(got) < len(b) {
		n, err := w.ReadAt(buf, int64(len(got)))
		got = append(got, buf[:n]...)
		if n == 0 && errors.Is(err, io.EOF) {
			if _, ok := <-progress; !ok && w.Size() == int64(len(got)) {
				break
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			t.Fatalf("ReadAt: %v", err)
		}
	}
	if !bytes.Equal(got, b) {
		t.Fatalf("follower read %d bytes differing from the %d written", len(got), len(b))
	}
	if _, err := w.Commit(ctx, int64(len(b)), digest.FromBytes(b)); err != nil {
		t.Fatal(err)
	}
}
