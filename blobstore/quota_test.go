package blobstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

func usage(t *testing.T, s blobstore.Store) int64 {
	t.Helper()
	n, _, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestEvictLRU: the image whose manifests were read longest ago goes first,
// whole (tag, manifest, config, its own layers); a layer it shares with
// images that stay is kept. Reading a layer alone does not make an image
// recent: every pull reads the manifests.
func TestEvictLRU(t *testing.T) {
	tests := []struct {
		name string
		uses []string // image names in the order they are used (after all were stored)
		// touchLayer: image whose own layer is read after the uses.
		touchLayer string
		victim     string
	}{
		{name: "oldest goes", uses: []string{"a", "b", "c"}, victim: "a"},
		{name: "pulled again stays", uses: []string{"a", "b", "c", "a"}, victim: "b"},
		{name: "newest last", uses: []string{"c", "b", "a"}, victim: "c"},
		{name: "layer reads do not count", uses: []string{"a", "b", "c"}, touchLayer: "a", victim: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
				ctx := context.Background()
				base := storetest.Blob(1, 500)
				imgs := map[string]testImage{}
				for i, name := range []string{"a", "b", "c"} {
					clock.tick()
					imgs[name] = putImage(t, s, "lib/"+name, "v1", []string{"amd64", "arm64", "ppc64le"}[i], base, storetest.Blob(uint64(10+i), 1000))
				}
				for _, name := range tt.uses {
					use(s, clock, imgs[name].manifest)
				}
				if tt.touchLayer != "" {
					use(s, clock, imgs[tt.touchLayer].blobs[2])
				}
				victim := imgs[tt.victim]
				own := append([]digest.Digest{victim.manifest}, victim.blobs[0], victim.blobs[2])
				ownBytes := victim.size - 500
				before := usage(t, s)
				st, err := blobstore.Evict(ctx, s, before-1, nil)
				if err != nil {
					t.Fatal(err)
				}
				if st.Images != 1 || st.Blobs != 3 || st.Bytes != ownBytes || st.Before != before || st.After != before-ownBytes {
					t.Errorf("Evict = %+v; want 1 image, 3 blobs, %d bytes, %d -> %d", st, ownBytes, before, before-ownBytes)
				}
				wantGone(t, s, victim, own...)
				for name, img := range imgs {
					if name != tt.victim {
						wantWhole(t, s, img)
					}
				}
				// Everything goes when asked, the shared layer last.
				if st, err = blobstore.Evict(ctx, s, 0, nil); err != nil || st.After != 0 || st.Images != 2 {
					t.Errorf("Evict to 0 = %+v, %v; want 2 more images and an empty store", st, err)
				}
			})
		})
	}
}

// TestEvictPinned: nothing a pinned index names goes (platform manifests,
// configs, layers, a referrer of a platform manifest and its blob, a layer
// shared with an unpinned image); unpinned, it goes like anything else.
func TestEvictPinned(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		ctx := context.Background()
		shared := storetest.Blob(2, 700)
		amd := putImage(t, s, "app", "", "amd64", shared, storetest.Blob(3, 900))
		arm := putImage(t, s, "app", "", "arm64", storetest.Blob(4, 800))
		idx := putIndex(t, s, "app", "v1", map[string]testImage{"amd64": amd, "arm64": arm})
		sig, sigBlob := putReferrer(t, s, "app", amd.manifest, []byte("signature"))
		clock.tick()
		other := putImage(t, s, "other", "v1", "riscv64", shared, storetest.Blob(5, 1200))
		use(s, clock, other.manifest) // the unpinned image is the more recent one
		if err := s.Pin(ctx, idx); err != nil {
			t.Fatal(err)
		}
		keep := slices.Concat([]digest.Digest{idx, amd.manifest, arm.manifest, sig, sigBlob, blobstoreEmpty()}, amd.blobs, arm.blobs)
		var keepBytes int64
		for _, d := range keep {
			info, err := s.Stat(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			keepBytes += info.Size
		}
		st, err := blobstore.Evict(ctx, s, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.After != keepBytes || st.Images != 1 {
			t.Errorf("Evict = %+v; want the pinned %d bytes left after removing 1 image", st, keepBytes)
		}
		if _, gone := present(t, s, keep...); len(gone) > 0 {
			t.Errorf("pinned content evicted: %v", gone)
		}
		wantGone(t, s, other, other.manifest, other.blobs[0], other.blobs[2])
		if d, err := s.Resolve(ctx, "app", "v1"); err != nil || d != idx {
			t.Errorf("pinned tag: %s, %v", d, err)
		}
		c, err := blobstore.LoadCatalog(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if img, ok := c.Find("app", idx); !ok || !img.Complete() || !img.Pinned {
			t.Errorf("pinned image in catalog: %+v, %v; want complete and pinned", img, ok)
		}
		if err := s.Unpin(ctx, idx); err != nil {
			t.Fatal(err)
		}
		if st, err := blobstore.Evict(ctx, s, 0, nil); err != nil || st.After != 0 {
			t.Errorf("Evict after Unpin = %+v, %v; want an empty store", st, err)
		}
	})
}

// TestEvictPinnedPlatform: pinning one platform manifest of an index keeps
// that platform; the index and the other platform go, and the pinned
// manifest shows as an untagged image of its own.
func TestEvictPinnedPlatform(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, _ *testClock) {
		ctx := context.Background()
		amd := putImage(t, s, "app", "", "amd64", storetest.Blob(17, 1000))
		arm := putImage(t, s, "app", "", "arm64", storetest.Blob(18, 1000))
		idx := putIndex(t, s, "app", "v1", map[string]testImage{"amd64": amd, "arm64": arm})
		if err := s.Pin(ctx, amd.manifest); err != nil {
			t.Fatal(err)
		}
		st, err := blobstore.Evict(ctx, s, 0, nil)
		if err != nil || st.Images != 1 {
			t.Fatalf("Evict = %+v, %v; want the index removed", st, err)
		}
		wantWhole(t, s, amd)
		wantGone(t, s, testImage{repo: "app", tag: "v1"}, append([]digest.Digest{idx, arm.manifest}, arm.blobs...)...)
		c, err := blobstore.LoadCatalog(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Images) != 1 || c.Images[0].Digest != amd.manifest || !c.Images[0].Pinned || !c.Images[0].Complete() {
			t.Errorf("images after eviction = %+v; want the pinned amd64 manifest, complete", c.Images)
		}
	})
}

func blobstoreEmpty() digest.Digest { return digest.FromBytes([]byte("{}")) }

// TestEvictBusy: an image with a blob being fetched or served stays; the
// next least recently used one goes instead.
func TestEvictBusy(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		ctx := context.Background()
		a := putImage(t, s, "a", "v1", "amd64", storetest.Blob(6, 1000))
		clock.tick()
		b := putImage(t, s, "b", "v1", "arm64", storetest.Blob(7, 1000))
		busy := func(d digest.Digest) bool { return d == a.blobs[1] }
		st, err := blobstore.Evict(ctx, s, usage(t, s)-1, busy)
		if err != nil {
			t.Fatal(err)
		}
		if st.SkippedBusy != 1 || st.Images != 1 {
			t.Errorf("Evict = %+v; want 1 skipped as busy, 1 image removed", st)
		}
		wantWhole(t, s, a)
		wantGone(t, s, b, append([]digest.Digest{b.manifest}, b.blobs...)...)
	})
}

// TestEvictOrphans: a blob no image names goes by its own age, but not
// within OrphanGrace of its last use (a push whose manifest is on its way).
func TestEvictOrphans(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		ctx := context.Background()
		old := storetest.Put(t, s, storetest.Blob(8, 300))
		clock.tick()
		img := putImage(t, s, "a", "v1", "amd64", storetest.Blob(9, 1000))
		clock.t = time.Now()
		fresh := storetest.Put(t, s, storetest.Blob(10, 300))
		st, err := blobstore.Evict(ctx, s, usage(t, s)-1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if st.Blobs != 1 || st.Images != 0 {
			t.Errorf("Evict = %+v; want the old orphan only", st)
		}
		if _, gone := present(t, s, old, fresh); !slices.Equal(gone, []digest.Digest{old}) {
			t.Errorf("gone = %v; want only the old orphan %s", gone, old)
		}
		wantWhole(t, s, img)
		if st, err = blobstore.Evict(ctx, s, 0, nil); err != nil || st.After != 300 {
			t.Errorf("Evict to 0 = %+v, %v; want only the fresh orphan (300 bytes) left", st, err)
		}
	})
}

// TestEvictSharedManifest: one manifest tagged in two repositories is one
// image for eviction: both tags go with it.
func TestEvictSharedManifest(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		ctx := context.Background()
		img := putImage(t, s, "r1", "v1", "amd64", storetest.Blob(11, 1000))
		if err := s.PutManifest(ctx, "r2", mustManifest(t, s, "r1", img.manifest)); err != nil {
			t.Fatal(err)
		}
		if err := s.Tag(ctx, "r2", "latest", img.manifest); err != nil {
			t.Fatal(err)
		}
		clock.tick()
		newer := putImage(t, s, "r3", "v1", "arm64", storetest.Blob(12, 1000))
		st, err := blobstore.Evict(ctx, s, usage(t, s)-1, nil)
		if err != nil || st.Images != 1 {
			t.Fatalf("Evict = %+v, %v", st, err)
		}
		for _, rt := range [][2]string{{"r1", "v1"}, {"r2", "latest"}} {
			if d, err := s.Resolve(ctx, rt[0], rt[1]); err == nil {
				t.Errorf("%s:%s still points at %s", rt[0], rt[1], d)
			}
		}
		wantWhole(t, s, newer)
	})
}

func mustManifest(t *testing.T, s blobstore.Store, repo string, d digest.Digest) blobstore.Manifest {
	t.Helper()
	m, err := s.GetManifest(context.Background(), repo, d)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// recorder logs the removals made through it.
type recorder struct {
	blobstore.Store
	calls []string
}

func (r *recorder) Delete(ctx context.Context, d digest.Digest) error {
	r.calls = append(r.calls, "delete "+d.String())
	return r.Store.Delete(ctx, d)
}

func (r *recorder) Untag(ctx context.Context, repo, tag string) error {
	r.calls = append(r.calls, "untag "+repo+":"+tag)
	return r.Store.Untag(ctx, repo, tag)
}

func (r *recorder) UntagIf(ctx context.Context, repo, tag string, d digest.Digest) error {
	r.calls = append(r.calls, "untag "+repo+":"+tag)
	return r.Store.UntagIf(ctx, repo, tag, d)
}

// TestEvictThroughStore: eviction removes only through the store it was
// given (so the node's announcing store withdraws it), tags first, then
// manifests, then what they named.
func TestEvictThroughStore(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, _ *testClock) {
		img := putImage(t, s, "a", "v1", "amd64", storetest.Blob(13, 1000))
		rec := &recorder{Store: s}
		if _, err := blobstore.Evict(context.Background(), rec, 0, nil); err != nil {
			t.Fatal(err)
		}
		want := []string{"untag a:v1", "delete " + img.manifest.String()}
		for _, d := range img.blobs {
			want = append(want, "delete "+d.String())
		}
		if !slices.Equal(rec.calls, want) {
			t.Errorf("calls =\n%v\nwant\n%v", rec.calls, want)
		}
	})
}

// TestCatalog: what `images ls` shows: tagged and untagged images, not the
// platform manifests or referrers; completeness, sizes, platforms, pins.
func TestCatalog(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		ctx := context.Background()
		amd := putImage(t, s, "app", "", "amd64", storetest.Blob(14, 1000))
		arm := putImage(t, s, "app", "", "arm64", storetest.Blob(15, 2000))
		idx := putIndex(t, s, "app", "v1", map[string]testImage{"amd64": amd, "arm64": arm})
		putReferrer(t, s, "app", idx, []byte("sbom"))
		armInfo, _ := s.Stat(ctx, arm.manifest)
		if err := s.Delete(ctx, arm.manifest); err != nil { // the arm64 platform was never pulled
			t.Fatal(err)
		}
		for _, d := range arm.blobs {
			if err := s.Delete(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		clock.tick()
		solo := putImage(t, s, "solo", "", "riscv64", storetest.Blob(16, 500))
		use(s, clock, solo.manifest)
		if err := s.Pin(ctx, solo.manifest); err != nil {
			t.Fatal(err)
		}
		c, err := blobstore.LoadCatalog(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, img := range c.Images {
			got = append(got, fmt.Sprintf("%s%v@%.15s", img.Repo, img.Tags, img.Digest))
		}
		want := []string{fmt.Sprintf("app[v1]@%.15s", idx), fmt.Sprintf("solo[]@%.15s", solo.manifest)}
		if !slices.Equal(got, want) {
			t.Fatalf("images = %v; want %v", got, want)
		}
		ix, so := c.Images[0], c.Images[1]
		if ix.Complete() || !slices.Equal(ix.Missing, []digest.Digest{arm.manifest}) || ix.Pinned {
			t.Errorf("index: complete %v, missing %v, pinned %v; want incomplete, missing the arm64 manifest, unpinned", ix.Complete(), ix.Missing, ix.Pinned)
		}
		if !slices.Equal(ix.Platforms, []string{"linux/amd64", "linux/arm64"}) {
			t.Errorf("index platforms %v", ix.Platforms)
		}
		if ix.Present >= ix.Size || ix.Size-ix.Present != armInfo.Size {
			t.Errorf("index size %d, present %d; want the arm64 manifest's %d bytes missing", ix.Size, ix.Present, armInfo.Size)
		}
		if !so.Complete() || !so.Pinned || so.Size != solo.size || so.Present != solo.size ||
			!slices.Equal(so.Platforms, []string{"linux/riscv64"}) || !so.Accessed.Equal(clock.now()) {
			t.Errorf("solo = %+v; want complete, pinned, %d bytes, linux/riscv64, accessed %v", so, solo.size, clock.now())
		}
		// The platform filter: amd64 alone is complete.
		for _, d := range c.Closure(idx, "linux/amd64") {
			if _, ok := c.Has(d); !ok {
				t.Errorf("closure for linux/amd64 names %s, which is absent", d)
			}
		}
	})
}

// TestGC: commits through a watched store wake the GC, which evicts down to
// the low watermark once usage passes the high one, and counts it.
func TestGC(t *testing.T) {
	s := blobstore.NewMemory()
	clock := &testClock{t: time.Now()}
	s.SetClock(clock.now)
	g := blobstore.NewGC(blobstore.Quota{Max: 12500, High: 10500, Low: 5000}, time.Hour, nil)
	w := g.Watch(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Run(ctx, w, nil)
	}()
	defer func() {
		cancel()
		<-done
	}()
	var imgs []testImage
	for i := range 4 { // 4 × ~2.4 kB (9648 bytes): under High
		clock.tick()
		imgs = append(imgs, putImage(t, w, fmt.Sprintf("r%d", i), "v1", "amd64", storetest.Blob(uint64(20+i), 2000)))
	}
	if st := g.Stats(); st.Runs != 0 {
		t.Fatalf("GC ran under the high watermark: %+v", st)
	}
	clock.tick()
	last := putImage(t, w, "r4", "v1", "amd64", storetest.Blob(30, 2000)) // past High
	deadline := time.Now().Add(10 * time.Second)
	for usage(t, s) > 5000 {
		if time.Now().After(deadline) {
			t.Fatalf("usage %d, still above the low watermark", usage(t, s))
		}
		time.Sleep(5 * time.Millisecond)
	}
	st := g.Stats()
	if st.Runs != 1 || st.Blobs == 0 || st.Bytes == 0 {
		t.Errorf("Stats = %+v; want one run that evicted", st)
	}
	wantWhole(t, s, last)
	wantGone(t, s, imgs[0], imgs[0].manifest)
}

// TestPinsAndAccessSurviveReopen: pins are durable; touches reach the index
// at Close and are there after a reopen.
func TestPinsAndAccessSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s, err := blobstore.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	clock := &testClock{t: time.Now().Add(-time.Hour)}
	s.SetClock(clock.now)
	img := putImage(t, s, "a", "v1", "amd64", storetest.Blob(19, 100))
	if err := s.Pin(ctx, img.manifest); err != nil {
		t.Fatal(err)
	}
	clock.tick()
	s.Touch(ctx, img.blobs[1])
	touched := clock.now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openFiles(t, dir)
	if pins, err := s.Pins(ctx); err != nil || !slices.Equal(pins, []digest.Digest{img.manifest}) {
		t.Errorf("Pins after reopen = %v, %v", pins, err)
	}
	if at, err := s.LastAccess(ctx, img.blobs[1]); err != nil || !at.Equal(touched) {
		t.Errorf("LastAccess after reopen = %v, %v; want %v", at, err, touched)
	}
}

// repusher pushes a new image (once) just as eviction starts untagging.
type repusher struct {
	blobstore.Store
	once sync.Once
	push func()
}

func (r *repusher) UntagIf(ctx context.Context, repo, tag string, d digest.Digest) error {
	r.once.Do(r.push)
	return r.Store.UntagIf(ctx, repo, tag, d)
}

func (r *repusher) Untag(ctx context.Context, repo, tag string) error {
	r.once.Do(r.push)
	return r.Store.Untag(ctx, repo, tag)
}

// TestEvictKeepsAnImagePushedMeanwhile: a tag re-pushed while eviction
// removes its old image stays, with every blob of the new image, also the
// config the two share.
func TestEvictKeepsAnImagePushedMeanwhile(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, clock *testClock) {
		old := putImage(t, s, "a", "latest", "amd64", storetest.Blob(41, 3000))
		clock.t = clock.t.Add(time.Hour) // old enough to go first
		var fresh testImage
		r := &repusher{Store: s, push: func() {
			clock.tick()
			fresh = putImage(t, s, "a", "latest", "amd64", storetest.Blob(42, 3000))
		}}
		if _, err := blobstore.Evict(context.Background(), r, 0, nil); err != nil {
			t.Fatal(err)
		}
		if fresh.manifest == "" {
			t.Fatal("eviction untagged nothing")
		}
		wantWhole(t, s, fresh)
		if fresh.blobs[0] != old.blobs[0] {
			t.Fatalf("the two images do not share their config")
		}
	})
}

// TestRemoveAStaleTagKeepsTheImage: removing a tag that no longer names
// the image (a repeated rm) leaves the image its other tag names.
func TestRemoveAStaleTagKeepsTheImage(t *testing.T) {
	stores(t, func(t *testing.T, s blobstore.Store, _ *testClock) {
		ctx := context.Background()
		img := putImage(t, s, "a", "v2", "amd64", storetest.Blob(43, 1000))
		if err := s.Tag(ctx, "a", "v1", img.manifest); err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			st, err := blobstore.RemoveImage(ctx, s, "a", "v1", img.manifest, nil)
			if err != nil || st.Removed || st.Blobs != 0 {
				t.Fatalf("rm a:v1 (%d): %+v, %v; want the tag only", i+1, st, err)
			}
		}
		wantWhole(t, s, img)
	})
}

// TestOffersPlatform: an index offers a platform one of its manifests is
// for, also through a nested index; an image manifest offers any.
func TestOffersPlatform(t *testing.T) {
	s := blobstore.NewMemory()
	amd := putImage(t, s, "app", "", "amd64", []byte("amd64 layer"))
	arm := putImage(t, s, "app", "", "arm64", []byte("arm64 layer"))
	idx := putIndex(t, s, "app", "v1", map[string]testImage{"amd64": amd, "arm64": arm})
	info, err := s.Stat(context.Background(), idx)
	if err != nil {
		t.Fatal(err)
	}
	outer := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
		{MediaType: ocispec.MediaTypeImageIndex, Digest: idx, Size: info.Size}}}
	outer.SchemaVersion = 2
	body, err := json.Marshal(outer)
	if err != nil {
		t.Fatal(err)
	}
	nested := putManifestBody(t, s, "app", "nested", body)
	c, err := blobstore.LoadCatalog(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		d        digest.Digest
		platform string
		want     bool
	}{
		{idx, "linux/amd64", true}, {idx, "linux/s390x", false}, {idx, "", true},
		{nested, "linux/arm64", true}, {nested, "linux/s390x", false},
		{amd.manifest, "linux/s390x", true},
	} {
		if got := c.OffersPlatform(tc.d, tc.platform); got != tc.want {
			t.Errorf("OffersPlatform(%s, %q) = %v, want %v", tc.d, tc.platform, got, tc.want)
		}
	}
}
