package blobstore_test

import (
	"context"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

// TestRemoveImage: rm untags; the image goes with what only it used; a
// second tag, another image, another repository or a pin keep what they
// need; a pinned image the user removes loses its pin.
func TestRemoveImage(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, _ *testClock) {
		ctx := context.Background()
		shared := storetest.Blob(40, 600)
		a := putImage(t, s, "a", "v1", "amd64", shared, storetest.Blob(41, 900))
		b := putImage(t, s, "b", "v1", "arm64", shared, storetest.Blob(42, 800))
		if err := s.Tag(ctx, "a", "v2", a.manifest); err != nil {
			t.Fatal(err)
		}
		// One of two tags: only the tag goes.
		st, err := blobstore.RemoveImage(ctx, s, "a", "v2", a.manifest, nil)
		if err != nil || st.Removed || st.Blobs != 0 {
			t.Fatalf("rm a:v2 = %+v, %v; want untag only", st, err)
		}
		wantWhole(t, s, a)
		// The last tag: a goes, the layer b shares stays.
		if err := s.Pin(ctx, a.manifest); err != nil {
			t.Fatal(err)
		}
		st, err = blobstore.RemoveImage(ctx, s, "a", "v1", a.manifest, nil)
		if err != nil || !st.Removed || !st.Unpinned || st.Blobs != 3 || st.Bytes != a.size-600 {
			t.Fatalf("rm a:v1 = %+v, %v; want removed, unpinned, 3 blobs, %d bytes", st, err, a.size-600)
		}
		wantGone(t, s, a, a.manifest, a.blobs[0], a.blobs[2])
		wantWhole(t, s, b)
		if pins, err := s.Pins(ctx); err != nil || len(pins) != 0 {
			t.Errorf("Pins after rm of the pinned image = %v, %v; want none", pins, err)
		}
		// The same manifest in two repositories: removing one keeps it.
		if err := s.PutManifest(ctx, "c", mustManifest(t, s, "b", b.manifest)); err != nil {
			t.Fatal(err)
		}
		if err := s.Tag(ctx, "c", "v1", b.manifest); err != nil {
			t.Fatal(err)
		}
		st, err = blobstore.RemoveImage(ctx, s, "b", "", b.manifest, nil)
		if err != nil || !st.Removed || !st.Shared || st.Blobs != 0 {
			t.Fatalf("rm b@digest = %+v, %v; want removed from b, content shared", st, err)
		}
		if _, err := s.GetManifest(ctx, "b", b.manifest); err == nil {
			t.Error("repository b still holds the manifest")
		}
		wantWhole(t, s, testImage{repo: "c", tag: "v1", manifest: b.manifest, blobs: b.blobs})
		// A busy blob stays for a later eviction.
		busy := func(d digest.Digest) bool { return d == b.blobs[2] }
		st, err = blobstore.RemoveImage(ctx, s, "c", "v1", b.manifest, busy)
		if err != nil || st.Blobs != 3 {
			t.Fatalf("rm c:v1 = %+v, %v; want 3 blobs deleted, the busy one kept", st, err)
		}
		if held, _ := present(t, s, b.blobs...); len(held) != 1 || held[0] != b.blobs[2] {
			t.Errorf("held after rm = %v; want only the busy layer", held)
		}
	})
}
