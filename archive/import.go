package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// ImportOptions configure Import.
type ImportOptions struct {
	// Node is the node's registry API; default DefaultNode.
	Node string
	// Name replaces the names the archive gives: a full reference for an
	// archive of one image, or a repository under which every image keeps
	// its tags.
	Name string
	// Transport carries the requests; default a new http.Transport.
	Transport http.RoundTripper
	// Progress shows the bytes moved; nil shows nothing.
	Progress *Progress
	// Logger gets warnings (an index's platforms missing from the archive).
	Logger *slog.Logger
}

// Image is an image name Import pushed or Export wrote.
type Image struct {
	Name      string          // docker.io/library/nginx:1.27
	Digest    v1.Hash         // of the manifest or index
	MediaType types.MediaType // of the manifest or index
}

// ImportResult is what Import did.
type ImportResult struct {
	Format string  // FormatOCILayout, FormatOCIArchive or FormatDockerArchive
	Images []Image // one per name
	Bytes  int64   // of the blobs and manifests of the images
	// Skipped lists manifests an index names that the archive lacks (a
	// platform not saved); pulls of those platforms will fail.
	Skipped []v1.Descriptor
}

// Import pushes every image of the archive at path into the node, checking
// every blob and manifest against its digest as it is read: content that
// does not verify is never committed (the node checks again), and the
// import fails. A name's tag is pushed last, after all it names.
func Import(ctx context.Context, path string, opts ImportOptions) (_ *ImportResult, err error) {
	defer func() {
		if err != nil {
			opts.Progress.abort()
		}
	}()
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c, err := newNodeClient(opts.Node, opts.Transport)
	if err != nil {
		return nil, err
	}
	if opts.Transport == nil {
		defer c.close()
	}
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	if err := c.ping(ctx); err != nil {
		return nil, err
	}
	a, err := openArchive(ctx, path)
	if err != nil {
		return nil, err
	}
	defer a.close()
	tgts, err := targets(a.roots, opts.Name)
	if err != nil {
		return nil, err
	}
	if err := unique(tgts, a.roots, path, opts.Name); err != nil {
		return nil, err
	}
	res := &ImportResult{Format: a.format}
	plans := make([]*plan, len(a.roots))
	counted := map[v1.Hash]bool{}
	// Each manifest is read (and hashed) once for all images: an index.json
	// naming one large manifest thousands of times must not hold thousands
	// of copies.
	read := map[v1.Hash][]byte{}
	readOnce := func(d v1.Descriptor) ([]byte, error) {
		if b, ok := read[d.Digest]; ok {
			if int64(len(b)) != d.Size {
				return nil, fmt.Errorf("%s: %d bytes, the archive's has %d: %w", d.Digest, d.Size, len(b), ErrDigest)
			}
			return b, nil
		}
		b, err := a.readBlob(d)
		if err == nil {
			read[d.Digest] = b
		}
		return b, err
	}
	for i, r := range a.roots {
		p, err := walk(r.desc, readOnce, a.hasBlob)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		plans[i] = p
		for _, s := range p.skipped {
			opts.Logger.Warn("the archive lacks a manifest the index names; pulls of it will fail",
				"index", r.desc.Digest.String(), "digest", s.Digest.String(), "platform", platform(s))
			res.Skipped = append(res.Skipped, s)
		}
		for _, b := range p.blobs {
			if !counted[b.Digest] {
				counted[b.Digest] = true
				res.Bytes += b.Size
			}
		}
		for _, m := range p.manifests {
			if !counted[m.desc.Digest] {
				counted[m.desc.Digest] = true
				res.Bytes += m.desc.Size
			}
		}
	}
	opts.Progress.SetTotal(res.Bytes)
	im := &importer{a: a, c: c, prog: opts.Progress, credit: map[v1.Hash]int64{},
		pushed: map[string]bool{}, where: map[string]name.Repository{}}
	// Every image's content first, by digest; the tags only once all of it
	// is in: an archive that fails halfway leaves no image tagged.
	for i, p := range plans {
		for _, t := range tgts[i] {
			if err := im.push(ctx, p, t); err != nil {
				return nil, fmt.Errorf("import %s: %w", t.name, err)
			}
		}
	}
	for i, p := range plans {
		for _, t := range tgts[i] {
			root := p.manifests[len(p.manifests)-1]
			if err := im.tag(ctx, t, root); err != nil {
				return nil, fmt.Errorf("import %s: %w", t.name, err)
			}
			res.Images = append(res.Images, Image{Name: t.name, Digest: root.desc.Digest, MediaType: root.desc.MediaType})
		}
	}
	opts.Progress.Finish()
	return res, nil
}

// importer pushes plans, each blob and manifest once per repository.
type importer struct {
	a    *archive
	c    *nodeClient
	prog *Progress

	mu     sync.Mutex
	credit map[v1.Hash]int64          // bytes of a blob counted in progress
	pushed map[string]bool            // "ns|repo|digest" already on the node
	where  map[string]name.Repository // "ns|digest" -> a repository holding it
}

// push writes plan p under target t: blobs, then manifests, the root last.
func (im *importer) push(ctx context.Context, p *plan, t target) error {
	pu, err := im.c.pusher(ctx, t.ns)
	if err != nil {
		return err
	}
	repo, err := im.c.repo(t)
	if err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, b := range p.blobs {
		key := t.ns + "|" + t.repo + "|" + b.Digest.String()
		if im.pushed[key] {
			continue
		}
		var l v1.Layer = &blobLayer{im: im, desc: b}
		if from, ok := im.where[t.ns+"|"+b.Digest.String()]; ok {
			l = &remote.MountableLayer{Layer: l, Reference: from.Digest(b.Digest.String())}
		}
		g.Go(func() error {
			if err := pu.Upload(gctx, repo, l); err != nil {
				return cause(fmt.Errorf("blob %s: %w", b.Digest, fromNode(err)))
			}
			im.count(b.Digest, b.Size, b.Size) // already there, or mounted
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	for _, b := range p.blobs {
		im.pushed[t.ns+"|"+t.repo+"|"+b.Digest.String()] = true
		if _, ok := im.where[t.ns+"|"+b.Digest.String()]; !ok {
			im.where[t.ns+"|"+b.Digest.String()] = repo
		}
	}
	for _, m := range p.manifests {
		key := t.ns + "|" + t.repo + "|" + m.desc.Digest.String()
		if im.pushed[key] {
			continue
		}
		if err := pu.Put(ctx, repo.Digest(m.desc.Digest.String()), m); err != nil {
			return fmt.Errorf("manifest %s: %w", m.desc.Digest, fromNode(err))
		}
		im.pushed[key] = true
		im.count(m.desc.Digest, m.desc.Size, m.desc.Size)
	}
	return nil
}

// tag points t's name at root, pushed before by digest.
func (im *importer) tag(ctx context.Context, t target, root manifest) error {
	pu, err := im.c.pusher(ctx, t.ns)
	if err != nil {
		return err
	}
	ref, err := im.c.ref(t)
	if err != nil {
		return err
	}
	if err := pu.Put(ctx, ref, root); err != nil {
		return fmt.Errorf("manifest %s: %w", root.desc.Digest, fromNode(err))
	}
	return nil
}

// count credits n bytes of blob d (size bytes) to the progress, never more
// than size in all: a retried or repeated upload is not counted twice.
func (im *importer) count(d v1.Hash, n, size int64) {
	im.mu.Lock()
	n = min(n, size-im.credit[d])
	im.credit[d] += n
	im.mu.Unlock()
	im.prog.Add(n)
}

// blobLayer is a blob of the archive as go-containerregistry uploads it:
// its bytes verified as they are read, counted as they go.
type blobLayer struct {
	im   *importer
	desc v1.Descriptor
}

func (l *blobLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *blobLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *blobLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }

// DiffID is not needed to push a blob.
func (l *blobLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, fmt.Errorf("blob %s: diff ID: %w", l.desc.Digest, ErrUnsupported)
}

// Uncompressed is not needed to push a blob.
func (l *blobLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("blob %s: uncompressed: %w", l.desc.Digest, ErrUnsupported)
}

// Compressed opens the blob's bytes as stored.
func (l *blobLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.im.a.open(l.desc.Digest, l.desc.Size)
	if err != nil {
		return nil, err
	}
	return &countingReader{ReadCloser: rc, add: func(n int64) { l.im.count(l.desc.Digest, n, l.desc.Size) }}, nil
}

// countingReader reports the bytes read through it.
type countingReader struct {
	io.ReadCloser
	add func(int64)
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	r.add(int64(n))
	return n, err
}

// cause cuts an error about bad or missing content down to ours: the
// HTTP request it broke adds nothing for the user.
func cause(err error) error {
	for _, s := range []error{ErrDigest, ErrMissing} {
		if !errors.Is(err, s) {
			continue
		}
		for {
			u := errors.Unwrap(err)
			if u == nil || u == s || !errors.Is(u, s) {
				return err
			}
			err = u
		}
	}
	return err
}

// platform names a descriptor's platform for messages.
func platform(d v1.Descriptor) string {
	if d.Platform == nil {
		return "-"
	}
	return d.Platform.String()
}
