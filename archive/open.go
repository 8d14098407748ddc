package archive

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Formats Import reads.
const (
	FormatOCILayout     = "oci-layout"     // a folder: oci-layout, index.json, blobs/
	FormatOCIArchive    = "oci-archive"    // that folder in a tar (also docker save since Docker 25)
	FormatDockerArchive = "docker-archive" // docker save before Docker 25: manifest.json, config, layer tars
)

// maxMetadata bounds what is read into memory whole: index.json,
// manifest.json, manifests and image configs.
const maxMetadata = 16 << 20

// archive is an opened input: the images it holds and their blobs.
type archive struct {
	format string
	fsys   fs.FS
	roots  []root
	files  map[v1.Hash]string // blob -> path in fsys, where not blobs/<alg>/<hex>
	made   map[v1.Hash][]byte // blobs made here (a docker-archive's manifests, configs)
	closer io.Closer          // the tar, or the folder's os.Root
}

// root is an image the archive names at its top level.
type root struct {
	desc  v1.Descriptor
	names []string // as the archive gives them; may be bare tags
}

// openArchive opens a folder or a (gzip-compressed) tar and finds its
// images. ctx stops the decompression of a compressed tar.
func openArchive(ctx context.Context, p string) (_ *archive, err error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	a := &archive{files: map[v1.Hash]string{}, made: map[v1.Hash][]byte{}}
	if fi.IsDir() {
		// Through an os.Root: a symlink in the folder cannot reach a file
		// outside it (which the import would push into the fleet).
		r, err := os.OpenRoot(p)
		if err != nil {
			return nil, err
		}
		a.fsys, a.closer = r.FS(), r
	} else {
		t, err := openTar(ctx, p)
		if err != nil {
			return nil, err
		}
		a.fsys, a.closer = t, t
	}
	defer func() {
		if err != nil {
			_ = a.close()
		}
	}()
	switch {
	case a.has("index.json"):
		a.format = FormatOCIArchive
		if fi.IsDir() {
			a.format = FormatOCILayout
		}
		err = a.readOCI()
	case a.has("manifest.json"):
		a.format = FormatDockerArchive
		err = a.readDocker()
	default:
		return nil, fmt.Errorf("%s: %w (no index.json or manifest.json)", p, ErrFormat)
	}
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w", p, a.format, err)
	}
	if len(a.roots) == 0 {
		return nil, fmt.Errorf("%s (%s): holds no image: %w", p, a.format, ErrMissing)
	}
	return a, nil
}

func (a *archive) close() error {
	if a.closer == nil {
		return nil
	}
	return a.closer.Close()
}

func (a *archive) has(name string) bool {
	_, err := fs.Stat(a.fsys, name)
	return err == nil
}

// readSmall reads a metadata file whole.
func (a *archive) readSmall(name string) ([]byte, error) {
	f, err := a.fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxMetadata+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxMetadata {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", name, maxMetadata, ErrUnsupported)
	}
	return b, nil
}

// readOCI reads index.json (and checks oci-layout when present).
func (a *archive) readOCI() error {
	if a.has("oci-layout") {
		b, err := a.readSmall("oci-layout")
		if err != nil {
			return err
		}
		var l struct {
			Version string `json:"imageLayoutVersion"`
		}
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("oci-layout: %w: %v", ErrFormat, err)
		}
		if !strings.HasPrefix(l.Version, "1.") {
			return fmt.Errorf("oci-layout: image layout version %q: %w", l.Version, ErrUnsupported)
		}
	}
	b, err := a.readSmall("index.json")
	if err != nil {
		return err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("index.json: %w: %v", ErrFormat, err)
	}
	for _, d := range idx.Manifests {
		if d.MediaType != "" && !isManifest(d.MediaType) {
			return fmt.Errorf("index.json names %s of media type %q: %w", d.Digest, d.MediaType, ErrUnsupported)
		}
		a.roots = append(a.roots, root{desc: d, names: namesOf(d.Annotations)})
	}
	return nil
}

// open opens blob d for reading, checked against d and size as it is read.
func (a *archive) open(d v1.Hash, size int64) (io.ReadCloser, error) {
	if b, ok := a.made[d]; ok {
		return verify(io.NopCloser(bytes.NewReader(b)), d, size)
	}
	f, err := a.fsys.Open(a.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s is not in the archive: %w", d, ErrMissing)
	}
	if err != nil {
		return nil, err
	}
	return verify(f, d, size)
}

// readBlob reads a (small) blob whole and verifies it.
func (a *archive) readBlob(desc v1.Descriptor) ([]byte, error) {
	if desc.Size > maxMetadata {
		return nil, fmt.Errorf("%s: %d bytes, more than %d: %w", desc.Digest, desc.Size, maxMetadata, ErrUnsupported)
	}
	rc, err := a.open(desc.Digest, desc.Size)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// hasBlob reports whether the archive holds d.
func (a *archive) hasBlob(d v1.Hash) bool {
	if _, ok := a.made[d]; ok {
		return true
	}
	return a.has(a.path(d))
}

func (a *archive) path(d v1.Hash) string {
	if p, ok := a.files[d]; ok {
		return p
	}
	return "blobs/" + d.Algorithm + "/" + d.Hex
}

// notThere turns a missing file into ErrMissing.
func notThere(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %v", ErrMissing, err)
	}
	return err
}

// isManifest reports whether mt is an image manifest or an index.
func isManifest(mt types.MediaType) bool {
	return mt.IsImage() || mt.IsIndex() || mt.IsSchema1()
}
