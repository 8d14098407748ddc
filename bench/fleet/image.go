package fleet

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"

	"github.com/opencontainers/go-digest"
	specs "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// Image is the benchmark's OCI image, held in memory: a manifest, a config
// and layers of deterministic random bytes.
type Image struct {
	Repo, Tag      string
	Manifest       []byte
	ManifestDigest digest.Digest
	Blobs          map[digest.Digest][]byte // config and layers
	Order          []digest.Digest          // config first, then the layers
}

// Size is what one device pulls: manifest, config and layers (S).
func (im *Image) Size() int64 {
	n := int64(len(im.Manifest))
	for _, b := range im.Blobs {
		n += int64(len(b))
	}
	return n
}

// LayerMediaType is the layers' media type. The bytes are random, not a
// tar: a registry and a mirror never look inside.
const LayerMediaType = v1.MediaTypeImageLayer

// MakeImage builds an image of layers layers adding up to size bytes
// (the first layers take the remainder), each from ChaCha8 seeded with seed
// and its index: the same arguments give the same digests.
func MakeImage(repo, tag string, size int64, layers int, seed uint64) (*Image, error) {
	if layers < 1 || size < int64(layers) {
		return nil, fmt.Errorf("image of %d bytes in %d layers: want at least a byte per layer", size, layers)
	}
	im := &Image{Repo: repo, Tag: tag, Blobs: map[digest.Digest][]byte{}}
	var descs []v1.Descriptor
	var diffIDs []digest.Digest
	for i := range layers {
		n := size / int64(layers)
		if int64(i) < size%int64(layers) {
			n++
		}
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		binary.LittleEndian.PutUint64(key[8:], uint64(i))
		copy(key[16:], "imgmesh-fleet-ly")
		data := make([]byte, n)
		_, _ = rand.NewChaCha8(key).Read(data) // never fails
		d := digest.FromBytes(data)
		im.Blobs[d] = data
		descs = append(descs, v1.Descriptor{MediaType: LayerMediaType, Digest: d, Size: n})
		diffIDs = append(diffIDs, d) // uncompressed: the diff ID is the digest
	}
	cfg, err := json.Marshal(v1.Image{
		Platform: v1.Platform{Architecture: "amd64", OS: "linux"},
		Config:   v1.ImageConfig{Labels: map[string]string{"org.imgmesh.bench.seed": fmt.Sprint(seed)}},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cd := digest.FromBytes(cfg)
	im.Blobs[cd] = cfg
	im.Order = append([]digest.Digest{cd}, digestsOf(descs)...)
	im.Manifest, err = json.Marshal(v1.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    v1.Descriptor{MediaType: v1.MediaTypeImageConfig, Digest: cd, Size: int64(len(cfg))},
		Layers:    descs,
	})
	if err != nil {
		return nil, fmt.Errorf("image manifest: %w", err)
	}
	im.ManifestDigest = digest.FromBytes(im.Manifest)
	return im, nil
}

func digestsOf(ds []v1.Descriptor) []digest.Digest {
	out := make([]digest.Digest, len(ds))
	for i, d := range ds {
		out[i] = d.Digest
	}
	return out
}
