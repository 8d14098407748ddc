package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// imageKind picks the media types of a test image.
type imageKind int

const (
	dockerImage imageKind = iota // Docker schema 2 (what Docker Hub mostly serves)
	ociImage                     // OCI image manifest
)

// randomImage builds an image of `layers` random gzip tar layers of about
// size bytes each, for os/arch (the config says so, as a real image does).
func randomImage(t *testing.T, kind imageKind, layers int, size int64, arch string) v1.Image {
	t.Helper()
	img, layerType := empty.Image, types.DockerLayer
	if kind == ociImage {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		layerType = types.OCILayer
	}
	for range layers {
		l, err := random.Layer(size, layerType)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.AppendLayers(img, l)
		if err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	cfg.Config.Cmd = []string{"/bin/true"}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// hostImage is randomImage for the machine's own platform (so containerd's
// default platform matcher accepts it).
func hostImage(t *testing.T, kind imageKind, layers int, size int64) v1.Image {
	t.Helper()
	return randomImage(t, kind, layers, size, runtime.GOARCH)
}

// multiArch is an OCI index of two platform images, serialized as most
// registries' indexes are: entries carry no artifactType (skopeo 1.9
// drops it, which would change the index digest).
type multiArch struct {
	images []v1.Image
	raw    []byte
}

// RawManifest and MediaType make multiArch a remote.Taggable.
func (m multiArch) RawManifest() ([]byte, error) { return m.raw, nil }

// MediaType is the OCI index media type.
func (m multiArch) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }

// multiArchIndex builds an index of a linux/amd64 and a linux/arm64 image.
func multiArchIndex(t *testing.T) multiArch {
	t.Helper()
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	var ma multiArch
	for _, arch := range []string{"amd64", "arm64"} {
		img := randomImage(t, ociImage, 2, 64<<10, arch)
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		size, err := img.Size()
		if err != nil {
			t.Fatal(err)
		}
		im.Manifests = append(im.Manifests, v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Size:      size,
			Digest:    d,
			Platform:  &v1.Platform{OS: "linux", Architecture: arch},
		})
		ma.images = append(ma.images, img)
	}
	raw, err := json.Marshal(im)
	if err != nil {
		t.Fatal(err)
	}
	ma.raw = raw
	return ma
}

// randomBlob is a layer of exactly size random bytes (not a tar) and the
// sha256 of its bytes, for tests that only move blobs.
func randomBlob(t *testing.T, size int) (v1.Layer, []byte) {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return static.NewLayer(b, types.OCIUncompressedLayer), b
}

// sha256Digest is "sha256:<hex>" of b.
func sha256Digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ref parses "host/repo:tag" for pushes over plain HTTP.
func ref(t *testing.T, host, repoTag string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(host+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// push writes img straight into the upstream registry (not through the
// counting proxy) and returns its manifest digest.
func (u *upstreamRegistry) push(ctx context.Context, t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	if err := remote.Write(ref(t, u.direct, repoTag), img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push %s: %v", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// pushIndex writes the images of an index by digest, then the index.
func (u *upstreamRegistry) pushIndex(ctx context.Context, t *testing.T, repoTag string, ma multiArch) string {
	t.Helper()
	r := ref(t, u.direct, repoTag)
	for _, img := range ma.images {
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(r.Context().Digest(d.String()), img, remote.WithContext(ctx)); err != nil {
			t.Fatalf("push %s@%s: %v", repoTag, d, err)
		}
	}
	if err := remote.Put(r, ma, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push index %s: %v", repoTag, err)
	}
	return sha256Digest(ma.raw)
}

// pushBlob uploads a single blob into repo of the upstream registry.
func (u *upstreamRegistry) pushBlob(ctx context.Context, t *testing.T, repo string, l v1.Layer) {
	t.Helper()
	r, err := name.NewRepository(u.direct+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(r, l, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push blob to %s: %v", repo, err)
	}
}

// imageBlobs lists the config and layer digests of img with their sizes.
func imageBlobs(t *testing.T, img v1.Image) map[string]int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		blobs[l.Digest.String()] = l.Size
	}
	return blobs
}

// rawManifest returns the manifest bytes and media type of img.
func rawManifest(t *testing.T, img v1.Image) ([]byte, string) {
	t.Helper()
	b, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	mt, err := img.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	return b, string(mt)
}

// layerBytes returns the compressed bytes of every blob of img by digest.
func layerBytes(t *testing.T, img v1.Image) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	out[sha256Digest(cfg)] = cfg
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := readAllClose(rc)
		if err != nil {
			t.Fatal(err)
		}
		out[sha256Digest(b)] = b
	}
	if len(out) != len(imageBlobs(t, img)) {
		t.Fatalf("image has %d distinct blobs, read %d", len(imageBlobs(t, img)), len(out))
	}
	for d := range out {
		if _, ok := imageBlobs(t, img)[d]; !ok {
			t.Fatal(fmt.Errorf("blob %s is not in the manifest", d))
		}
	}
	return out
}
