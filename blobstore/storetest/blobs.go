package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

func testOpenSeek(t *testing.T, s blobstore.Store) {
	b := Blob(8, 4096)
	d := Put(t, s, b)
	rc, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tests := []struct {
		name   string
		offset int64
		whence int
		pos    int64
	}{
		{"start", 100, io.SeekStart, 100},
		{"current", 50, io.SeekCurrent, 155}, // 100 + 5 read + 50
		{"end", -10, io.SeekEnd, 4086},
	}
	for _, tt := range tests {
		pos, err := rc.Seek(tt.offset, tt.whence)
		if err != nil || pos != tt.pos {
			t.Fatalf("%s: Seek = %d, %v; want %d", tt.name, pos, err, tt.pos)
		}
		got := make([]byte, 5)
		if _, err := io.ReadFull(rc, got); err != nil {
			t.Fatalf("%s: read: %v", tt.name, err)
		}
		if !bytes.Equal(got, b[pos:pos+5]) {
			t.Errorf("%s: read %x, want %x", tt.name, got, b[pos:pos+5])
		}
	}
	got := make([]byte, 16)
	if n, err := rc.ReadAt(got, 4080); n != 16 || err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("ReadAt = %d, %v", n, err)
	}
	if !bytes.Equal(got, b[4080:]) {
		t.Error("ReadAt returned other bytes")
	}
}

func testInvalidDigest(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	tests := []struct {
		name string
		d    digest.Digest
		want error // nil: any error
	}{
		{"unsupported", "md5:d41d8cd98f00b204e9800998ecf8427e", blobstore.ErrUnsupportedDigest},
		{"short hex", "sha256:abc", nil},
		{"path escape", "sha256:../../../../etc/passwd", nil},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Stat(ctx, tt.d)
			if err == nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("Stat(%q): %v, want %v", tt.d, err, tt.want)
			}
			if rc, err := s.Open(ctx, tt.d); err == nil {
				rc.Close()
				t.Errorf("Open(%q) succeeded", tt.d)
			}
			if err := s.Delete(ctx, tt.d); err == nil {
				t.Errorf("Delete(%q) succeeded", tt.d)
			}
		})
	}
}

func testParallelSame(t *testing.T, s blobstore.Store) {
	b := Blob(9, 256<<10)
	d := digest.FromBytes(b)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			ctx := context.Background()
			w, err := s.NewWriter(ctx)
			if err != nil {
				errs <- err
				return
			}
			for off := 0; off < len(b); off += 32 << 10 {
				if _, err := w.Write(b[off : off+32<<10]); err != nil {
					errs <- err
					return
				}
			}
			if _, err := w.Commit(ctx, int64(len(b)), d); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("parallel writer of the same blob: %v", err)
	}
	wantUsage(t, s, int64(len(b)), 1)
	if got := walk(t, s); len(got) != 1 || got[0].Digest != d {
		t.Errorf("Walk = %v", got)
	}
	if !bytes.Equal(ReadAll(t, s, d), b) {
		t.Error("blob differs after parallel commits")
	}
}

func testParallelDistinct(t *testing.T, s blobstore.Store) {
	const n = 16
	var wg sync.WaitGroup
	var total int64
	for i := range n {
		total += int64(1000 + i)
		wg.Go(func() {
			b := Blob(uint64(100+i), 1000+i)
			d := digest.FromBytes(b)
			if err := put(s, b, d); err != nil {
				t.Error(err)
				return
			}
			if err := s.Link(context.Background(), fmt.Sprintf("repo%d", i%3), d); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	wantUsage(t, s, total, n)
	if got := walk(t, s); len(got) != n {
		t.Errorf("Walk found %d blobs, want %d", len(got), n)
	}
}

func testWritable(t *testing.T, s blobstore.Store) {
	if err := s.Writable(context.Background()); err != nil {
		t.Errorf("Writable: %v", err)
	}
}
