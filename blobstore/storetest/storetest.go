// Package storetest is the conformance suite of blobstore.Store: every
// implementation (the file store, the in-memory fake) must pass it. It also
// holds FullDisk, a store that runs out of space, for the tests of the
// store's users.
package storetest

import (
	"context"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Run runs the suite. newStore returns an empty store and registers its own
// cleanup (Close) with t.
func Run(t *testing.T, newStore func(t *testing.T) blobstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s blobstore.Store)
	}{
		{"CommitVisibleOnlyAfterVerify", testCommitVisible},
		{"Mismatch", testMismatch},
		{"SHA512", testSHA512},
		{"EmptyBlob", testEmptyBlob},
		{"Cancel", testCancel},
		{"ReadAtFollowsWriter", testReadAtFollows},
		{"ReadAtConcurrent", testReadAtConcurrent},
		{"OpenSeek", testOpenSeek},
		{"InvalidDigest", testInvalidDigest},
		{"Links", testLinks},
		{"Manifests", testManifests},
		{"Referrers", testReferrers},
		{"Tags", testTags},
		{"UnlinkCascades", testUnlinkCascades},
		{"DeleteCascades", testDeleteCascades},
		{"Usage", testUsage},
		{"Walk", testWalk},
		{"ParallelSameDigest", testParallelSame},
		{"ParallelDistinct", testParallelDistinct},
		{"Writable", testWritable},
		{"Pins", testPins},
		{"Access", testAccess},
		{"WalkManifests", testWalkManifests},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, newStore(t))
		})
	}
}

// Blob returns n pseudo-random bytes derived from seed.
func Blob(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// SHA512 returns the sha512 digest of b.
func SHA512(b []byte) digest.Digest {
	sum := sha512.Sum512(b)
	return digest.NewDigestFromBytes(digest.SHA512, sum[:])
}

// Put writes and commits b under its sha256 digest, failing t on error.
func Put(t testing.TB, s blobstore.Store, b []byte) digest.Digest {
	t.Helper()
	return PutAs(t, s, b, digest.FromBytes(b))
}

// PutAs writes and commits b under d (sha256 or sha512).
func PutAs(t testing.TB, s blobstore.Store, b []byte, d digest.Digest) digest.Digest {
	t.Helper()
	if err := put(s, b, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func put(s blobstore.Store, b []byte, d digest.Digest) error {
	ctx := context.Background()
	w, err := s.NewWriter(ctx)
	if err != nil {
		return fmt.Errorf("NewWriter: %w", err)
	}
	if _, err := w.Write(b); err != nil {
		_ = w.Cancel()
		return fmt.Errorf("write: %w", err)
	}
	info, err := w.Commit(ctx, int64(len(b)), d)
	if err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	if info.Digest != d || info.Size != int64(len(b)) {
		return fmt.Errorf("commit = %+v, want %s size %d", info, d, len(b))
	}
	return nil
}

// ReadAll opens d and returns its bytes.
func ReadAll(t testing.TB, s blobstore.Store, d digest.Digest) []byte {
	t.Helper()
	rc, err := s.Open(context.Background(), d)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	return b
}

// WantNotFound fails t unless blob d is absent (Stat and Open).
func WantNotFound(t testing.TB, s blobstore.Store, d digest.Digest) {
	t.Helper()
	if info, err := s.Stat(context.Background(), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Stat %s = %+v, %v; want ErrNotFound", d, info, err)
	}
	if rc, err := s.Open(context.Background(), d); !errors.Is(err, blobstore.ErrNotFound) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("Open %s: %v; want ErrNotFound", d, err)
	}
}

func wantUsage(t *testing.T, s blobstore.Store, bytes, count int64) {
	t.Helper()
	b, n, err := s.Usage(context.Background())
	if err != nil || b != bytes || n != count {
		t.Errorf("Usage = %d bytes, %d blobs, %v; want %d, %d", b, n, err, bytes, count)
	}
}

func walk(t *testing.T, s blobstore.Store) []blobstore.Info {
	t.Helper()
	var out []blobstore.Info
	if err := s.Walk(context.Background(), func(i blobstore.Info) error {
		out = append(out, i)
		return nil
	}); err != nil {
		t.Fatalf("Walk: %v", err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out
}
