package blobstore_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

// stores runs fn against a fresh Memory and a fresh Files store.
func stores(t *testing.T, fn func(t *testing.T, s blobstore.Store, clock *testClock)) {
	for _, tc := range []struct {
		name string
		open func(t *testing.T) blobstore.Store
	}{
		{"Memory", func(*testing.T) blobstore.Store { return blobstore.NewMemory() }},
		{"Files", func(t *testing.T) blobstore.Store { return openFiles(t, t.TempDir()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := tc.open(t)
			clock := &testClock{t: time.Now().Add(-24 * time.Hour)}
			s.(storetest.Clocked).SetClock(clock.now)
			fn(t, s, clock)
		})
	}
}

// testClock starts a day in the past (older than OrphanGrace) and moves
// only when told.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time { return c.t }
func (c *testClock) tick()          { c.t = c.t.Add(time.Second) }

// testImage is an image written by putImage.
type testImage struct {
	repo, tag string
	manifest  digest.Digest
	blobs     []digest.Digest // config and layers
	size      int64           // manifest, config and layers
}

// putImage stores an OCI image (config plus the given layers) in repo,
// tagged tag ("" = untagged), with arch in its config.
func putImage(t testing.TB, s blobstore.Store, repo, tag, arch string, layers ...[]byte) testImage {
	t.Helper()
	ctx := context.Background()
	cfg := []byte(`{"os":"linux","architecture":"` + arch + `","rootfs":{"type":"layers"}}`)
	img := testImage{repo: repo, tag: tag}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	m.SchemaVersion = 2
	m.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: storetest.Put(t, s, cfg), Size: int64(len(cfg))}
	img.blobs = append(img.blobs, m.Config.Digest)
	img.size += int64(len(cfg))
	for _, l := range layers {
		d := storetest.Put(t, s, l)
		m.Layers = append(m.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: d, Size: int64(len(l))})
		if err := s.Link(ctx, repo, d); err != nil {
			t.Fatal(err)
		}
		img.blobs = append(img.blobs, d)
		img.size += int64(len(l))
	}
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	img.manifest = putManifestBody(t, s, repo, tag, body)
	img.size += int64(len(body))
	return img
}

// putManifestBody commits and indexes a manifest body in repo, tagged tag
// unless "".
func putManifestBody(t testing.TB, s blobstore.Store, repo, tag string, body []byte) digest.Digest {
	t.Helper()
	ctx := context.Background()
	d := storetest.Put(t, s, body)
	rec, err := blobstore.ParseManifest(body, "", d)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutManifest(ctx, repo, rec); err != nil {
		t.Fatal(err)
	}
	if tag != "" {
		if err := s.Tag(ctx, repo, tag, d); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// putIndex stores an index of the given platform manifests in repo.
func putIndex(t *testing.T, s blobstore.Store, repo, tag string, platforms map[string]testImage) digest.Digest {
	t.Helper()
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, arch := range []string{"amd64", "arm64", "riscv64"} {
		img, ok := platforms[arch]
		if !ok {
			continue
		}
		info, err := s.Stat(context.Background(), img.manifest)
		if err != nil {
			t.Fatal(err)
		}
		idx.Manifests = append(idx.Manifests, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest,
			Digest: img.manifest, Size: info.Size, Platform: &ocispec.Platform{OS: "linux", Architecture: arch}})
	}
	body, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	return putManifestBody(t, s, repo, tag, body)
}

// putReferrer stores an artifact manifest in repo whose subject is subject.
func putReferrer(t *testing.T, s blobstore.Store, repo string, subject digest.Digest, payload []byte) (manifest, blob digest.Digest) {
	t.Helper()
	blob = storetest.Put(t, s, payload)
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, ArtifactType: "application/vnd.test.sig",
		Config:  ocispec.DescriptorEmptyJSON,
		Layers:  []ocispec.Descriptor{{MediaType: "application/vnd.test.sig", Digest: blob, Size: int64(len(payload))}},
		Subject: &ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: subject, Size: 1}}
	m.SchemaVersion = 2
	storetest.Put(t, s, ocispec.DescriptorEmptyJSON.Data)
	body, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return putManifestBody(t, s, repo, "", body), blob
}

// present reports which of ds the store holds.
func present(t *testing.T, s blobstore.Store, ds ...digest.Digest) (held, gone []digest.Digest) {
	t.Helper()
	for _, d := range ds {
		if _, err := s.Stat(context.Background(), d); err == nil {
			held = append(held, d)
		} else {
			gone = append(gone, d)
		}
	}
	return held, gone
}

// wantWhole fails unless img is complete in the store, tag included.
func wantWhole(t *testing.T, s blobstore.Store, img testImage) {
	t.Helper()
	if _, gone := present(t, s, append([]digest.Digest{img.manifest}, img.blobs...)...); len(gone) > 0 {
		t.Errorf("image %s:%s lost %d blobs: %v", img.repo, img.tag, len(gone), gone)
	}
	if img.tag != "" {
		if d, err := s.Resolve(context.Background(), img.repo, img.tag); err != nil || d != img.manifest {
			t.Errorf("tag %s:%s = %s, %v; want %s", img.repo, img.tag, d, err, img.manifest)
		}
	}
}

// wantGone fails unless img's tag and the given blobs are gone.
func wantGone(t *testing.T, s blobstore.Store, img testImage, blobs ...digest.Digest) {
	t.Helper()
	if held, _ := present(t, s, blobs...); len(held) > 0 {
		t.Errorf("image %s:%s: %d blobs still held: %v", img.repo, img.tag, len(held), held)
	}
	if img.tag != "" {
		if d, err := s.Resolve(context.Background(), img.repo, img.tag); err == nil {
			t.Errorf("tag %s:%s still points at %s", img.repo, img.tag, d)
		}
	}
}

// use touches an image's manifest as a pull does.
func use(s blobstore.Store, clock *testClock, ds ...digest.Digest) {
	clock.tick()
	for _, d := range ds {
		s.Touch(context.Background(), d)
	}
}
