package archive

import (
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// plan is everything one image (or index) needs, in push order.
type plan struct {
	root      v1.Descriptor
	blobs     []v1.Descriptor // configs and layers, each digest once
	manifests []manifest      // children before their index; the root last
	skipped   []v1.Descriptor // platforms an index names that are not there
}

// manifest is a manifest's exact bytes and its descriptor.
type manifest struct {
	desc v1.Descriptor
	raw  []byte
}

// RawManifest and MediaType make a manifest a remote.Taggable: the bytes
// are pushed as they are, so the digest cannot change.
func (m manifest) RawManifest() ([]byte, error) { return m.raw, nil }

// MediaType is the manifest's media type.
func (m manifest) MediaType() (types.MediaType, error) { return m.desc.MediaType, nil }

// getter reads a manifest's bytes, verified against its descriptor.
type getter func(desc v1.Descriptor) ([]byte, error)

// has reports whether a manifest is available (an index's platforms may be
// partly missing from an archive).
type has func(d v1.Hash) bool

// walk reads root and everything below it. Manifests an index names that
// are absent (has says so) are skipped and listed; a missing config or
// layer fails when it is read.
func walk(root v1.Descriptor, get getter, present has) (*plan, error) {
	p := &plan{root: root}
	seenBlob := map[v1.Hash]bool{}
	seenMan := map[v1.Hash]bool{}
	var visit func(desc v1.Descriptor, depth int) error
	visit = func(desc v1.Descriptor, depth int) error {
		if seenMan[desc.Digest] {
			return nil
		}
		if depth > 8 {
			return fmt.Errorf("manifest %s: indexes nested too deep: %w", desc.Digest, ErrUnsupported)
		}
		raw, err := get(desc)
		if err != nil {
			return fmt.Errorf("manifest %s: %w", desc.Digest, err)
		}
		seenMan[desc.Digest] = true
		desc.MediaType = sniff(desc.MediaType, raw)
		switch {
		case desc.MediaType.IsIndex():
			idx, err := parseIndex(raw)
			if err != nil {
				return fmt.Errorf("index %s: %w", desc.Digest, err)
			}
			kept := 0
			for _, child := range idx.Manifests {
				if present != nil && !present(child.Digest) {
					p.skipped = append(p.skipped, child)
					continue
				}
				if err := visit(child, depth+1); err != nil {
					return err
				}
				kept++
			}
			if kept == 0 && len(idx.Manifests) > 0 {
				// A tag for it would serve an image no device can pull.
				return fmt.Errorf("index %s: none of its %d manifests is in the archive: %w", desc.Digest, len(idx.Manifests), ErrMissing)
			}
		case desc.MediaType.IsSchema1():
			return fmt.Errorf("manifest %s: Docker schema 1: %w", desc.Digest, ErrUnsupported)
		default:
			m, err := parseImage(raw)
			if err != nil {
				return fmt.Errorf("manifest %s: %w", desc.Digest, err)
			}
			for _, b := range append([]v1.Descriptor{m.Config}, m.Layers...) {
				if !b.MediaType.IsDistributable() || seenBlob[b.Digest] {
					continue // foreign layers stay where their URLs say
				}
				seenBlob[b.Digest] = true
				p.blobs = append(p.blobs, b)
			}
		}
		p.manifests = append(p.manifests, manifest{desc: desc, raw: raw})
		return nil
	}
	if err := visit(root, 0); err != nil {
		return nil, err
	}
	return p, nil
}

// sniff is mt, or when a descriptor did not say, what the body says.
func sniff(mt types.MediaType, raw []byte) types.MediaType {
	if mt != "" {
		return mt
	}
	var b struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	_ = json.Unmarshal(raw, &b)
	switch {
	case b.MediaType != "":
		return b.MediaType
	case b.Manifests != nil:
		return types.OCIImageIndex
	}
	return types.OCIManifestSchema1
}

func parseIndex(raw []byte) (*v1.IndexManifest, error) {
	var idx v1.IndexManifest
	if err := json.Unmarshal(raw, &idx); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	for _, c := range idx.Manifests {
		if c.MediaType != "" && !isManifest(c.MediaType) {
			return nil, fmt.Errorf("names %s of media type %q: %w", c.Digest, c.MediaType, ErrUnsupported)
		}
	}
	return &idx, nil
}

func parseImage(raw []byte) (*v1.Manifest, error) {
	var m v1.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if m.Config.Digest.Hex == "" {
		return nil, fmt.Errorf("no config: %w", ErrFormat)
	}
	return &m, nil
}
