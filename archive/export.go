package archive

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ExportOptions configure Export.
type ExportOptions struct {
	// Node is the node's registry API; default DefaultNode.
	Node string
	// Transport carries the requests; default a new http.Transport.
	Transport http.RoundTripper
	// Progress shows the bytes moved; nil shows nothing.
	Progress *Progress
}

// ExportResult is what Export wrote.
type ExportResult struct {
	Images []Image // one per reference, in order
	Blobs  int     // distinct blobs and manifests in the archive
	Bytes  int64   // their bytes
}

// Export reads refs (by tag or digest; a name without a registry is Docker
// Hub's) from the node and writes them to file as an oci-archive: an OCI
// image layout in a tar whose index.json has one entry per ref, annotated
// with org.opencontainers.image.ref.name and io.containerd.image.name.
// Manifests are copied byte for byte, so every digest stays; blobs are
// streamed into the tar and verified on the way. file is checked before the
// node is asked anything (a bad path must not cost a download): an
// *OutputError if it will not do. The archive is written to file+".tmp" and
// renamed when complete; on any error nothing is left.
func Export(ctx context.Context, refs []string, file string, opts ExportOptions) (*ExportResult, error) {
	tgts, err := parseRefs(refs)
	if err != nil {
		return nil, err
	}
	out, err := createArchive(file)
	if err != nil {
		return nil, err
	}
	return export(ctx, tgts, out, opts)
}

// ExportTo is Export writing the archive to w (a pipe, stdout). An error
// leaves what was written so far: w's reader must drop it.
func ExportTo(ctx context.Context, refs []string, w io.Writer, opts ExportOptions) (*ExportResult, error) {
	tgts, err := parseRefs(refs)
	if err != nil {
		return nil, err
	}
	return export(ctx, tgts, streamOutput{w}, opts)
}

func parseRefs(refs []string) ([]target, error) {
	if len(refs) == 0 {
		return nil, fmt.Errorf("no image to export: %w", ErrBadReference)
	}
	tgts := make([]target, len(refs))
	for i, r := range refs {
		t, err := parseRef(r)
		if err != nil {
			return nil, err
		}
		tgts[i] = t
	}
	return tgts, nil
}

func export(ctx context.Context, tgts []target, out output, opts ExportOptions) (_ *ExportResult, err error) {
	defer func() {
		if err != nil {
			out.discard()
			opts.Progress.abort()
		}
	}()
	c, err := newNodeClient(opts.Node, opts.Transport)
	if err != nil {
		return nil, err
	}
	if opts.Transport == nil {
		defer c.close()
	}
	if err := c.ping(ctx); err != nil {
		return nil, err
	}
	ex := &exporter{c: c, res: &ExportResult{}, seen: map[v1.Hash]bool{}}
	var index v1.IndexManifest
	index.SchemaVersion, index.MediaType = 2, types.OCIImageIndex
	for _, t := range tgts {
		root, err := ex.plan(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("export %s: %w", t.name, err)
		}
		root.Annotations = map[string]string{AnnotationRefName: t.refName(), AnnotationImageName: t.name}
		index.Manifests = append(index.Manifests, root)
		ex.res.Images = append(ex.res.Images, Image{Name: t.name, Digest: root.Digest, MediaType: root.MediaType})
	}
	opts.Progress.SetTotal(ex.res.Bytes)
	if err := ex.write(ctx, out, &index, opts.Progress); err != nil {
		return nil, err
	}
	if err := out.commit(); err != nil {
		return nil, err
	}
	opts.Progress.Finish()
	return ex.res, nil
}

// OutputError is a path Export cannot or should not write an archive to,
// found before the node is asked anything.
type OutputError struct {
	Path string // as given
	Err  error  // what is wrong with it
}

func (e *OutputError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *OutputError) Unwrap() error { return e.Err }

// output is where an archive is written.
type output interface {
	io.Writer
	commit() error // the archive is complete
	discard()      // it is not: leave nothing where that can be helped
}

// fileOutput writes file+".tmp" and renames it to file on commit.
type fileOutput struct {
	f    *os.File
	file string
}

// createArchive checks the path of an archive to write and creates its
// temporary file: before any download, with errors naming the path as
// given, and without touching file itself.
func createArchive(file string) (*fileOutput, error) {
	if err := checkPath(file); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(file+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the .tmp name would only puzzle
		}
		return nil, &OutputError{Path: file, Err: fmt.Errorf("cannot write it: %w", err)}
	}
	return &fileOutput{f: f, file: file}, nil
}

// checkPath refuses a path an archive cannot be renamed to, or should not.
func checkPath(file string) error {
	if file == "" {
		return errors.New("no file name for the archive")
	}
	if fi, err := os.Stat(file); err == nil {
		switch {
		case fi.IsDir():
			return &OutputError{Path: file, Err: errors.New("is a directory; give a file name for the archive")}
		case !fi.Mode().IsRegular():
			// The rename would replace it (a device, a pipe): never wanted.
			return &OutputError{Path: file, Err: errors.New("is not a regular file; give a file name for the archive")}
		}
		return nil // an older archive, replaced once the new one is complete
	}
	dir := filepath.Dir(file)
	di, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &OutputError{Path: file, Err: fmt.Errorf("directory %s does not exist", dir)}
	case err == nil && !di.IsDir():
		return &OutputError{Path: file, Err: fmt.Errorf("%s is not a directory", dir)}
	}
	return nil // creating the file tells the rest (permissions)
}

func (o *fileOutput) Write(p []byte) (int, error) { return o.f.Write(p) }

func (o *fileOutput) commit() error {
	if err := o.f.Sync(); err != nil {
		return err
	}
	if err := o.f.Close(); err != nil {
		return err
	}
	if err := os.Rename(o.f.Name(), o.file); err != nil {
		return err
	}
	if d, derr := os.Open(filepath.Dir(o.file)); derr == nil {
		_ = d.Sync() // the rename survives a power cut (best effort)
		d.Close()
	}
	return nil
}

func (o *fileOutput) discard() {
	o.f.Close()
	os.Remove(o.f.Name())
}

// streamOutput writes to a stream, which cannot take back what it got.
type streamOutput struct{ io.Writer }

func (streamOutput) commit() error { return nil }
func (streamOutput) discard()      {}

// exporter gathers what the refs need, then writes it.
type exporter struct {
	c     *nodeClient
	res   *ExportResult
	seen  map[v1.Hash]bool
	mans  []manifest   // every manifest, each once
	blobs []blobOnNode // every blob, each once
}

// blobOnNode is a blob and where the node serves it.
type blobOnNode struct {
	desc v1.Descriptor
	t    target
}

// plan reads t's manifests (verified) and lists its blobs; it returns the
// root's descriptor.
func (ex *exporter) plan(ctx context.Context, t target) (v1.Descriptor, error) {
	pl, err := ex.c.puller(ctx, t.ns)
	if err != nil {
		return v1.Descriptor{}, err
	}
	ref, err := ex.c.ref(t)
	if err != nil {
		return v1.Descriptor{}, err
	}
	top, err := pl.Get(ctx, ref)
	if err != nil {
		return v1.Descriptor{}, fromNode(err)
	}
	root := v1.Descriptor{MediaType: top.MediaType, Size: int64(len(top.Manifest))}
	if root.Digest, _, err = v1.SHA256(bytes.NewReader(top.Manifest)); err != nil {
		return v1.Descriptor{}, err
	}
	if t.digest != "" && root.Digest.String() != t.digest {
		return v1.Descriptor{}, fmt.Errorf("node sent manifest %s for %s: %w", root.Digest, t.digest, ErrDigest)
	}
	repo, err := ex.c.repo(t)
	if err != nil {
		return v1.Descriptor{}, err
	}
	get := func(d v1.Descriptor) ([]byte, error) {
		if d.Digest == root.Digest {
			return top.Manifest, nil
		}
		m, err := pl.Get(ctx, repo.Digest(d.Digest.String()))
		if err != nil {
			return nil, fromNode(err)
		}
		if err := checkBytes(m.Manifest, d.Digest, d.Size); err != nil {
			return nil, err
		}
		return m.Manifest, nil
	}
	p, err := walk(root, get, nil)
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, m := range p.manifests {
		if !ex.seen[m.desc.Digest] {
			ex.seen[m.desc.Digest] = true
			ex.mans = append(ex.mans, m)
			ex.res.Blobs++
			ex.res.Bytes += m.desc.Size
		}
	}
	for _, b := range p.blobs {
		if !ex.seen[b.Digest] {
			ex.seen[b.Digest] = true
			ex.blobs = append(ex.blobs, blobOnNode{desc: b, t: t})
			ex.res.Blobs++
			ex.res.Bytes += b.Size
		}
	}
	return p.manifests[len(p.manifests)-1].desc, nil
}

// write writes the archive to w.
func (ex *exporter) write(ctx context.Context, w io.Writer, index *v1.IndexManifest, prog *Progress) error {
	tw := tar.NewWriter(w)
	if err := writeFile(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	dirs := map[string]bool{}
	for _, m := range ex.mans {
		if err := writeDirs(tw, m.desc.Digest, dirs); err != nil {
			return err
		}
		if err := writeFile(tw, blobPath(m.desc.Digest), m.raw); err != nil {
			return err
		}
		prog.Add(m.desc.Size)
	}
	for _, b := range ex.blobs {
		if err := writeDirs(tw, b.desc.Digest, dirs); err != nil {
			return err
		}
		if err := ex.copyBlob(ctx, tw, b, prog); err != nil {
			return fmt.Errorf("export %s: %w", b.t.name, err)
		}
	}
	idx, err := json.Marshal(index)
	if err != nil {
		return err
	}
	if err := writeFile(tw, "index.json", idx); err != nil {
		return err
	}
	return tw.Close()
}

// copyBlob streams blob b from the node into the tar, verified.
func (ex *exporter) copyBlob(ctx context.Context, tw *tar.Writer, b blobOnNode, prog *Progress) error {
	pl, err := ex.c.puller(ctx, b.t.ns)
	if err != nil {
		return err
	}
	repo, err := ex.c.repo(b.t)
	if err != nil {
		return err
	}
	l, err := pl.Layer(ctx, repo.Digest(b.desc.Digest.String()))
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.desc.Digest, fromNode(err))
	}
	rc, err := l.Compressed()
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.desc.Digest, fromNode(err))
	}
	defer rc.Close()
	vr, err := verify(rc, b.desc.Digest, b.desc.Size)
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(header(blobPath(b.desc.Digest), b.desc.Size)); err != nil {
		return err
	}
	_, err = io.Copy(tw, &countingReader{ReadCloser: vr, add: prog.Add})
	if err != nil {
		if errors.Is(err, ErrDigest) {
			return err
		}
		return fmt.Errorf("blob %s: %w", b.desc.Digest, err)
	}
	return nil
}

// epoch is the time stamp of every member: the same images make the same
// archive, byte for byte.
var epoch = time.Unix(0, 0)

func header(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch}
}

func writeFile(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(header(name, int64(len(b)))); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// writeDirs writes blobs/ and blobs/<alg>/ once each.
func writeDirs(tw *tar.Writer, d v1.Hash, done map[string]bool) error {
	for _, dir := range []string{"blobs/", "blobs/" + d.Algorithm + "/"} {
		if done[dir] {
			continue
		}
		done[dir] = true
		h := &tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
	}
	return nil
}

func blobPath(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }
