package storetest

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/opencontainers/go-digest"
)

// FullDisk is a store whose disk fills after Room more blob bytes: past it,
// blob writes fail with blobstore.ErrNoSpace, and so do manifest, link and
// tag writes, as the file store's do near a full disk.
type FullDisk struct {
	blobstore.Store
	Room atomic.Int64
}

// NewWriter starts an ingest whose writes take from Room.
func (f *FullDisk) NewWriter(ctx context.Context) (blobstore.Writer, error) {
	w, err := f.Store.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	return &fullWriter{Writer: w, f: f}, nil
}

// PutManifest fails once Room is spent.
func (f *FullDisk) PutManifest(ctx context.Context, repo string, m blobstore.Manifest) error {
	if err := f.indexFull(); err != nil {
		return err
	}
	return f.Store.PutManifest(ctx, repo, m)
}

// Link fails once Room is spent.
func (f *FullDisk) Link(ctx context.Context, repo string, d digest.Digest) error {
	if err := f.indexFull(); err != nil {
		return err
	}
	return f.Store.Link(ctx, repo, d)
}

// Tag fails once Room is spent.
func (f *FullDisk) Tag(ctx context.Context, repo, tag string, d digest.Digest) error {
	if err := f.indexFull(); err != nil {
		return err
	}
	return f.Store.Tag(ctx, repo, tag, d)
}

// indexFull is the error of an index write once Room is spent.
func (f *FullDisk) indexFull() error {
	if f.Room.Load() <= 0 {
		return fmt.Errorf("index: %w", blobstore.ErrNoSpace)
	}
	return nil
}

type fullWriter struct {
	blobstore.Writer
	f *FullDisk
}

func (w *fullWriter) Write(p []byte) (int, error) {
	if w.f.Room.Add(-int64(len(p))) < 0 {
		return 0, fmt.Errorf("ingest write: %w", blobstore.ErrNoSpace)
	}
	return w.Writer.Write(p)
}
