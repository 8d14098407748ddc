package node_test

import (
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// imageDigests lists the config and layer digests of img with their sizes.
func imageDigests(t *testing.T, img v1.Image) map[digest.Digest]int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	out := map[digest.Digest]int64{digest.Digest(m.Config.Digest.String()): m.Config.Size}
	for _, l := range m.Layers {
		out[digest.Digest(l.Digest.String())] = l.Size
	}
	return out
}

// platformImage is an OCI image with two random layers for os/arch.
func platformImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	for _, size := range []int{40 << 10, 3000} {
		data := make([]byte, size)
		rand.Read(data)
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(data, types.OCILayer)); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestPullImageStoresEveryBlob(t *testing.T) {
	o := newOrigin(t)
	img, _ := pushImage(t, o, "team/app", "v1", 2<<20, 1<<20, 5000, 77)
	n, store := newNode(t, o)
	ctx := context.Background()
	nm := node.Name{NS: ns, Repo: "team/app"}

	var last node.Progress
	calls := 0
	got, err := n.PullImage(ctx, nm, "v1", node.PullOptions{Progress: func(p node.Progress) {
		if p.Done < last.Done {
			t.Errorf("progress went back: %d after %d", p.Done, last.Done)
		}
		last = p
		calls++
	}})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got.String() != want.String() {
		t.Fatalf("PullImage returned %s, the tag is %s", got, want)
	}
	blobs := imageDigests(t, img)
	var total int64
	for d, size := range blobs {
		total += size
		info, err := store.Stat(ctx, d)
		if err != nil || info.Size != size {
			t.Errorf("blob %s after PullImage: %+v, %v; want %d bytes stored", d, info, err, size)
		}
	}
	if last.State != node.PullComplete || last.Done != total || last.Total != total || last.Blobs != len(blobs) || last.BlobsDone != len(blobs) {
		t.Errorf("last progress %+v, want complete with %d of %d bytes, %d blobs", last, total, total, len(blobs))
	}
	if calls < 3 {
		t.Errorf("progress reported %d times", calls)
	}

	// Everything is local now: the upstream can go away.
	o.down.Store(true)
	got, err = n.PullImage(ctx, nm, "v1", node.PullOptions{})
	if err != nil || got.String() != want.String() {
		t.Fatalf("second pull with upstream down: %s, %v", got, err)
	}
	for d := range blobs {
		c, err := n.Blob(ctx, nm, d, true)
		if err != nil || c.Source != "local" {
			t.Errorf("blob %s: source %q, %v; want local", d, c.Source, err)
		}
	}
}

func TestPullImageIndexPlatforms(t *testing.T) {
	o := newOrigin(t)
	amd, arm := platformImage(t, "amd64"), platformImage(t, "arm64")
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	ref, err := name.ParseReference(o.host()+"/team/multi:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	idxDigest, _ := idx.Digest()
	nm := node.Name{NS: ns, Repo: "team/multi"}
	ctx := context.Background()

	platforms := func(ss ...string) []node.Platform {
		var out []node.Platform
		for _, s := range ss {
			p, err := node.ParsePlatform(s)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	tests := []struct {
		name      string
		platforms []string
		want      []v1.Image // whose blobs must be stored
		notWant   []v1.Image // whose blobs must not
		err       error
	}{
		{name: "arm64 only", platforms: []string{"linux/arm64"}, want: []v1.Image{arm}, notWant: []v1.Image{amd}},
		{name: "variant", platforms: []string{"linux/arm64/v8"}, want: []v1.Image{arm}, notWant: []v1.Image{amd}},
		{name: "wrong variant", platforms: []string{"linux/arm64/v7"}, err: node.ErrNoPlatform, notWant: []v1.Image{amd, arm}},
		{name: "no such platform", platforms: []string{"linux/s390x"}, err: node.ErrNoPlatform, notWant: []v1.Image{amd, arm}},
		{name: "all", want: []v1.Image{amd, arm}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, store := newNode(t, o)
			got, err := n.PullImage(ctx, nm, "v1", node.PullOptions{Platforms: platforms(tt.platforms...)})
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("got %v, want %v", err, tt.err)
				}
			} else if err != nil || got.String() != idxDigest.String() {
				t.Fatalf("PullImage: %s, %v; want the index %s", got, err, idxDigest)
			}
			for _, img := range tt.want {
				for d := range imageDigests(t, img) {
					if _, err := store.Stat(ctx, d); err != nil {
						t.Errorf("blob %s of a wanted platform: %v", d, err)
					}
				}
			}
			for _, img := range tt.notWant {
				for d := range imageDigests(t, img) {
					if _, err := store.Stat(ctx, d); !errors.Is(err, blobstore.ErrNotFound) {
						t.Errorf("blob %s of a platform not asked for: %v, want not stored", d, err)
					}
				}
			}
		})
	}
}

// TestPullImageMissing: an image the upstream does not have is unknown
// (prefetch stops waiting for it); with the upstream failing, the same pull
// is not: the image may well exist.
func TestPullImageMissing(t *testing.T) {
	o := newOrigin(t)
	n, _ := newNode(t, o)
	_, err := n.PullImage(context.Background(), node.Name{NS: ns, Repo: "team/none"}, "v1", node.PullOptions{})
	if !errors.Is(err, blobstore.ErrNotFound) || !errors.Is(err, node.ErrImageUnknown) {
		t.Fatalf("got %v, want ErrNotFound and ErrImageUnknown", err)
	}
	o.down.Store(true)
	_, err = n.PullImage(context.Background(), node.Name{NS: ns, Repo: "team/none"}, "v2", node.PullOptions{})
	if err == nil || errors.Is(err, node.ErrImageUnknown) {
		t.Fatalf("upstream down: got %v, want an error that is not ErrImageUnknown", err)
	}
}

func TestParsePlatform(t *testing.T) {
	tests := []struct {
		name, in, want string
		ok             bool
	}{
		{name: "os/arch", in: "linux/amd64", want: "linux/amd64", ok: true},
		{name: "variant", in: "linux/arm/v7", want: "linux/arm/v7", ok: true},
		{name: "arch only", in: "amd64"},
		{name: "empty part", in: "linux//v7"},
		{name: "too many", in: "linux/arm/v7/x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := node.ParsePlatform(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("ParsePlatform(%q): %v", tt.in, err)
			}
			if tt.ok && p.String() != tt.want {
				t.Fatalf("got %q, want %q", p, tt.want)
			}
		})
	}
}
