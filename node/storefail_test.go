package node_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
	"github.com/imgmesh/imgmesh/node"
)

// failLinkStore fails Link while fail is set: the repository index cannot
// be written (a full disk, a store error) after a blob was committed.
type failLinkStore struct {
	blobstore.Store
	fail atomic.Bool
}

func (s *failLinkStore) Link(ctx context.Context, key string, d digest.Digest) error {
	if s.fail.Load() {
		return errors.New("index write failed")
	}
	return s.Store.Link(ctx, key, d)
}

// TestLinkFailureAfterCommitKeepsTheBlob: a blob fetched, verified and
// stored reaches its reader whole even if linking it into the repository
// fails; the next read links it then and serves it from the store.
func TestLinkFailureAfterCommitKeepsTheBlob(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 1<<20)
	var store *failLinkStore
	n, files := newNodeOver(t, o, func(s blobstore.Store) blobstore.Store {
		store = &failLinkStore{Store: s}
		return store
	})
	ctx := context.Background()
	l := layers[0]
	d, _ := l.Digest()
	store.fail.Store(true)
	// A reader behind the download: it reads the rest only once the blob
	// is committed, and so waits on the link.
	c, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, digest.Digest(d.String()), false)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1)
	if _, err := io.ReadFull(c.Body, first); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := files.Stat(ctx, digest.Digest(d.String())); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the blob was not committed within 10s")
		}
	}
	rest, err := io.ReadAll(c.Body)
	c.Body.Close()
	if got := append(first, rest...); err != nil || !bytes.Equal(got, layerBytes(t, l)) {
		t.Fatalf("read with the link failing: %d bytes, %v; want the whole blob", len(got), err)
	}
	store.fail.Store(false)
	got, c, err := readBlob(ctx, n, "team/app", digest.Digest(d.String()))
	if err != nil || !bytes.Equal(got, layerBytes(t, l)) || c.Source != "local" {
		t.Fatalf("read after: %d bytes, source %q, %v; want the whole blob from the store", len(got), c.Source, err)
	}
	if g := o.gets(d); g != 1 {
		t.Errorf("upstream served the blob %d times, want once", g)
	}
}

// TestDownloadOntoAFullDisk: a blob that fills the node's disk fails with
// the reason, at once: the upstream is not asked again (no other source
// can help), and nothing is stored.
func TestDownloadOntoAFullDisk(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 3<<20+3)
	h, _ := layers[0].Digest()
	d := digest.Digest(h.String())
	disk := &storetest.FullDisk{}
	disk.Room.Store(1 << 20)
	n, real := newNodeOver(t, o, func(s blobstore.Store) blobstore.Store { disk.Store = s; return disk })
	if _, _, err := readBlob(t.Context(), n, "team/app", d); !errors.Is(err, blobstore.ErrNoSpace) {
		t.Fatalf("pull onto a full disk: %v, want ErrNoSpace", err)
	}
	if g := o.gets(h); g != 1 {
		t.Errorf("upstream asked %d times for a blob that could not be stored, want once", g)
	}
	if _, err := real.Stat(t.Context(), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("stat after the failed pull: %v, want not found", err)
	}
}

// TestFullDiskStillServesWhatItHolds: with the disk full, a blob the node
// holds is served to a repository it was not linked into yet (the link is
// record keeping the disk cannot take, not a reason to fail the pull).
func TestFullDiskStillServesWhatItHolds(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 100<<10)
	h, _ := layers[0].Digest()
	d := digest.Digest(h.String())
	disk := &storetest.FullDisk{}
	disk.Room.Store(1 << 30)
	n, real := newNodeOver(t, o, func(s blobstore.Store) blobstore.Store { disk.Store = s; return disk })
	want := layerBytes(t, layers[0])
	if got, _, err := readBlob(t.Context(), n, "team/app", d); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("first pull: %v", err)
	}
	waitStored(t, real, d)
	disk.Room.Store(0)
	got, c, err := readBlob(t.Context(), n, "team/other", d)
	if err != nil || !bytes.Equal(got, want) || c.Source != "local" {
		t.Fatalf("pull of a held blob with the disk full: source %q, %v, correct bytes %v", c.Source, err, bytes.Equal(got, want))
	}
}
