package archive

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// readDocker makes a manifest for each image of a `docker save` archive
// (manifest.json naming a config file and layer tars per image).
//
// Such an archive has no registry manifest, so Import writes one, chosen so
// that the same archive gives the same digests on every node and nothing is
// recompressed:
//   - an OCI image manifest (application/vnd.oci.image.manifest.v1+json),
//   - the config's bytes unchanged, as application/vnd.oci.image.config.v1+json
//     (Docker's config is the OCI config; its digest stays the Docker image ID),
//   - each layer's bytes unchanged: an uncompressed tar as
//     application/vnd.oci.image.layer.v1.tar, whose digest is then the
//     config's diff ID; a gzip or zstd layer as ...tar+gzip / ...tar+zstd.
//
// containerd (1.6 and later) and Docker pull and unpack all of these. Docker
// schema 2 has no uncompressed layer type, and compressing here would cost
// CPU and make the digests depend on the compressor.
func (a *archive) readDocker() error {
	b, err := a.readSmall("manifest.json")
	if err != nil {
		return err
	}
	var m tarball.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("manifest.json: %w: %v", ErrFormat, err)
	}
	for i, img := range m {
		desc, err := a.dockerImage(img)
		if err != nil {
			return fmt.Errorf("manifest.json image %d: %w", i, err)
		}
		a.roots = append(a.roots, root{desc: desc, names: img.RepoTags})
	}
	return nil
}

// dockerImage builds the manifest of one image of manifest.json.
func (a *archive) dockerImage(img tarball.Descriptor) (v1.Descriptor, error) {
	cfgBytes, err := a.readSmall(img.Config)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("config: %w", notThere(err))
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cfgBytes))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("config %s: %w: %v", img.Config, ErrFormat, err)
	}
	if len(cfg.RootFS.DiffIDs) != len(img.Layers) {
		return v1.Descriptor{}, fmt.Errorf("config lists %d diff IDs for %d layers: %w", len(cfg.RootFS.DiffIDs), len(img.Layers), ErrFormat)
	}
	man := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        a.keep(cfgBytes, types.OCIConfigJSON),
	}
	for i, p := range img.Layers {
		l, err := a.dockerLayer(p, cfg.RootFS.DiffIDs[i])
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s: %w", p, err)
		}
		man.Layers = append(man.Layers, l)
	}
	raw, err := json.Marshal(man)
	if err != nil {
		return v1.Descriptor{}, err
	}
	return a.keep(raw, man.MediaType), nil
}

// keep stores a blob made here and describes it.
func (a *archive) keep(b []byte, mt types.MediaType) v1.Descriptor {
	sum := sha256.Sum256(b)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	a.made[d] = b
	return v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: d}
}

// dockerLayer describes layer file p. An uncompressed layer's digest is its
// diff ID (checked when it is read to be pushed); a compressed one is
// hashed here, and its uncompressed content checked against the diff ID
// (what containerd checks when it unpacks the layer, too late for a line
// cut off from the archive's source).
func (a *archive) dockerLayer(p string, diffID v1.Hash) (v1.Descriptor, error) {
	f, err := a.fsys.Open(p)
	if err != nil {
		return v1.Descriptor{}, notThere(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return v1.Descriptor{}, err
	}
	var magic [4]byte
	n, _ := io.ReadFull(f, magic[:])
	var mt types.MediaType
	switch {
	case n >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		mt = types.OCILayer
	case n == 4 && magic == [4]byte{0x28, 0xb5, 0x2f, 0xfd}:
		mt = types.OCILayerZStd
	default:
		a.files[diffID] = p
		return v1.Descriptor{MediaType: types.OCIUncompressedLayer, Size: fi.Size(), Digest: diffID}, nil
	}
	h := sha256.New()
	src := io.TeeReader(io.MultiReader(bytes.NewReader(magic[:n]), f), h)
	dec, err := decompress(mt, src)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("layer %s: %v: %w", p, err, ErrDigest)
	}
	defer dec.Close()
	uh := sha256.New()
	if _, err := io.Copy(uh, dec); err != nil {
		return v1.Descriptor{}, fmt.Errorf("layer %s: %v: %w", p, err, ErrDigest)
	}
	if _, err := io.Copy(io.Discard, src); err != nil { // what follows the stream is hashed too
		return v1.Descriptor{}, err
	}
	if got := hex.EncodeToString(uh.Sum(nil)); diffID.Algorithm != "sha256" || got != diffID.Hex {
		return v1.Descriptor{}, fmt.Errorf("layer %s: uncompressed sha256:%s, the config's diff ID is %s: %w", p, got, diffID, ErrDigest)
	}
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	a.files[d] = p
	return v1.Descriptor{MediaType: mt, Size: fi.Size(), Digest: d}, nil
}

// decompress reads a gzip (types.OCILayer) or zstd layer.
func decompress(mt types.MediaType, r io.Reader) (io.ReadCloser, error) {
	if mt == types.OCILayer {
		return gzip.NewReader(r)
	}
	zr, err := zstd.NewReader(r)
	if err != nil {
		return nil, err
	}
	return zr.IOReadCloser(), nil
}
