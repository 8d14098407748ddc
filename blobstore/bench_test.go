package blobstore_test

import (
	"context"
	"encoding/binary"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

const benchSize = 64 << 20

func benchStore(b *testing.B) *blobstore.Files {
	s, err := blobstore.Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// BenchmarkWriteCommit measures ingest: 64 MiB written in 1 MiB chunks
// (hashed while written), then verified, fsynced and renamed.
func BenchmarkWriteCommit(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	data := storetest.Blob(1, benchSize)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		binary.LittleEndian.PutUint64(data, uint64(i)) // a new blob each time
		d := digest.FromBytes(data)
		b.StartTimer()
		w, err := s.NewWriter(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += 1 << 20 {
			if _, err := w.Write(data[off : off+1<<20]); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := w.Commit(ctx, benchSize, d); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := s.Delete(ctx, d); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkCommitSmall measures the fixed cost of one commit (fsyncs,
// rename, index write) with a 4 KiB blob.
func BenchmarkCommitSmall(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	data := storetest.Blob(2, 4096)
	for i := range b.N {
		binary.LittleEndian.PutUint64(data, uint64(i))
		storetest.Put(b, s, data)
	}
	_ = ctx
}

// BenchmarkOpenRead measures reading a committed 64 MiB blob through Open.
func BenchmarkOpenRead(b *testing.B) {
	s := benchStore(b)
	ctx := context.Background()
	d := storetest.Put(b, s, storetest.Blob(3, benchSize))
	buf := make([]byte, 1<<20)
	b.SetBytes(benchSize)
	b.ResetTimer()
	for range b.N {
		rc, err := s.Open(ctx, d)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{rc}, buf)
		if err != nil || n != benchSize {
			b.Fatal(n, err)
		}
		rc.Close()
	}
}
