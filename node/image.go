package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/imgmesh/imgmesh/blobstore"
)

// ErrNoPlatform: an index lists no manifest for the platforms asked for.
var ErrNoPlatform = errors.New("no manifest for the requested platforms")

// ErrImageUnknown: PullImage found no manifest for the reference (neither
// here, in the fleet nor upstream). The error also wraps the store's
// ErrNotFound, and reads as it did.
var ErrImageUnknown = errors.New("image unknown")

// imageUnknown marks a not-found root manifest as ErrImageUnknown without
// changing its message.
type imageUnknown struct{ error }

func (e imageUnknown) Is(target error) bool { return target == ErrImageUnknown }
func (e imageUnknown) Unwrap() error        { return e.error }

// Platform selects the manifests of an index: "os/arch[/variant]".
type Platform struct {
	OS, Architecture, Variant string
}

// ParsePlatform parses "os/arch" or "os/arch/variant".
func ParsePlatform(s string) (Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
	}
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t") {
			return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant]", s)
		}
	}
	p := Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func (p Platform) String() string {
	if p.Variant != "" {
		return p.OS + "/" + p.Architecture + "/" + p.Variant
	}
	return p.OS + "/" + p.Architecture
}

// matches reports whether an index entry's platform is p; a filter without
// a variant accepts every variant.
func (p Platform) matches(q *ocispec.Platform) bool {
	if q == nil {
		return false
	}
	return q.OS == p.OS && q.Architecture == p.Architecture && (p.Variant == "" || q.Variant == p.Variant)
}

// Pull states reported by PullImage.
const (
	PullManifests = "manifests" // resolving the tag, reading manifests
	PullBlobs     = "blobs"     // reading configs and layers
	PullComplete  = "complete"  // every blob is in the store
)

// Progress is how far PullImage got.
type Progress struct {
	State       string
	Done, Total int64 // config and layer bytes (Total known from State blobs on)
	Blobs       int   // distinct configs and layers
	BlobsDone   int
}

// PullOptions configure PullImage.
type PullOptions struct {
	// Platforms filters the manifests of an index; none: all of them. A
	// single-platform image is pulled whatever its platform.
	Platforms []Platform
	// Concurrency is how many blobs are read at once (default 3).
	Concurrency int
	// Progress, if set, is called as bytes arrive, never concurrently.
	Progress func(Progress)
}

// maxIndexDepth bounds indexes nested in indexes.
const maxIndexDepth = 4

// PullImage pulls a whole image through the node's own fetch policy (local,
// then the fleet, then upstream): it resolves ref (tag or digest) in name,
// reads the manifest or index, every child manifest of the platforms asked
// for, and every config and layer, so that all of it ends up verified in the
// store. It returns the digest ref resolved to.
func (n *Node) PullImage(ctx context.Context, name Name, ref string, opts PullOptions) (digest.Digest, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = 3
	}
	p := &pullProgress{fn: opts.Progress}
	p.report(func(pr *Progress) { pr.State = PullManifests })
	root, err := n.Manifest(ctx, name, ref, false)
	if errors.Is(err, blobstore.ErrNotFound) && !errors.Is(err, ErrUpstream) {
		return "", imageUnknown{err}
	}
	if err != nil {
		return "", err
	}
	blobs := map[digest.Digest]int64{}
	var order []digest.Digest
	if err := n.walkManifest(ctx, name, root, opts.Platforms, 0, func(d ocispec.Descriptor) {
		if _, ok := blobs[d.Digest]; !ok {
			blobs[d.Digest] = d.Size
			order = append(order, d.Digest)
		}
	}); err != nil {
		return "", err
	}
	p.report(func(pr *Progress) {
		pr.State, pr.Blobs = PullBlobs, len(order)
		for _, size := range blobs {
			pr.Total += size
		}
	})

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(opts.Concurrency)
	for _, d := range order {
		g.Go(func() error { return n.pullBlob(gctx, name, d, blobs[d], p) })
	}
	if err := g.Wait(); err != nil {
		return "", err
	}
	p.report(func(pr *Progress) { pr.State = PullComplete })
	return root.Digest, nil
}

// walkManifest calls blob for every config and layer of m: of m itself for
// an image manifest, of its children (filtered by platforms) for an index.
func (n *Node) walkManifest(ctx context.Context, name Name, m Manifest, platforms []Platform, depth int, blob func(ocispec.Descriptor)) error {
	var doc struct {
		MediaType string               `json:"mediaType"`
		Config    *ocispec.Descriptor  `json:"config"`
		Layers    []ocispec.Descriptor `json:"layers"`
		Manifests []ocispec.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(m.Body, &doc); err != nil {
		return fmt.Errorf("manifest %s@%s: %w: %v", name.Repo, m.Digest, blobstore.ErrInvalidManifest, err)
	}
	if doc.Manifests != nil || isIndex(m.MediaType) {
		if depth >= maxIndexDepth {
			return fmt.Errorf("index %s@%s: nested deeper than %d", name.Repo, m.Digest, maxIndexDepth)
		}
		picked := 0
		for _, child := range doc.Manifests {
			if !wanted(child, platforms) {
				continue
			}
			picked++
			cm, err := n.Manifest(ctx, name, child.Digest.String(), false)
			if err != nil {
				return err
			}
			if err := n.walkManifest(ctx, name, cm, platforms, depth+1, blob); err != nil {
				return err
			}
		}
		if picked == 0 && len(platforms) > 0 {
			return fmt.Errorf("index %s@%s: %w %v", name.Repo, m.Digest, ErrNoPlatform, platforms)
		}
		return nil
	}
	if doc.Config == nil {
		return fmt.Errorf("manifest %s@%s (%s): %w: no config and no manifests", name.Repo, m.Digest, m.MediaType, blobstore.ErrInvalidManifest)
	}
	for _, d := range append([]ocispec.Descriptor{*doc.Config}, doc.Layers...) {
		if foreign(d) {
			continue // non-distributable: served from elsewhere (d.URLs), never by registries
		}
		if err := blobstore.CheckDigest(d.Digest); err != nil {
			return fmt.Errorf("manifest %s@%s: %w", name.Repo, m.Digest, err)
		}
		if d.Size < 0 {
			return fmt.Errorf("manifest %s@%s: blob %s: %w: negative size", name.Repo, m.Digest, d.Digest, blobstore.ErrInvalidManifest)
		}
		blob(d)
	}
	return nil
}

// wanted reports whether an index entry passes the platform filter. Child
// indexes are always followed (their own entries are filtered).
func wanted(d ocispec.Descriptor, platforms []Platform) bool {
	if len(platforms) == 0 || isIndex(d.MediaType) {
		return true
	}
	for _, p := range platforms {
		if p.matches(d.Platform) {
			return true
		}
	}
	return false
}

func isIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex ||
		mediaType == "application/vnd.docker.distribution.manifest.list.v2+json"
}

func foreign(d ocispec.Descriptor) bool {
	return strings.Contains(d.MediaType, "foreign") || strings.Contains(d.MediaType, "nondistributable")
}

// pullBlob reads blob d through the node (so it is fetched, verified and
// stored like any client's pull), then waits until it is in the store.
func (n *Node) pullBlob(ctx context.Context, name Name, d digest.Digest, size int64, p *pullProgress) error {
	c, err := n.Blob(ctx, name, d, false)
	if err != nil {
		return err
	}
	got, err := io.Copy(progressWriter{p}, c.Body)
	c.Body.Close()
	if err != nil {
		return fmt.Errorf("blob %s@%s: %w", name.Repo, d, err)
	}
	if got != size {
		return fmt.Errorf("blob %s@%s: %d bytes, the manifest says %d: %w", name.Repo, d, got, size, blobstore.ErrSizeMismatch)
	}
	if err := n.settle(ctx, d); err != nil {
		return fmt.Errorf("blob %s@%s: %w", name.Repo, d, err)
	}
	p.report(func(pr *Progress) { pr.BlobsDone++ })
	return nil
}

// settle waits until a download of d in flight ended (its last byte reaches
// readers before the durable commit) and checks that d is in the store.
func (n *Node) settle(ctx context.Context, d digest.Digest) error {
	for {
		dl := n.inflight(d)
		if dl == nil {
			break
		}
		s := dl.state()
		if s.done {
			if s.err != nil {
				return s.err
			}
			break
		}
		select {
		case <-s.changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := n.store.Stat(ctx, d); err != nil {
		return fmt.Errorf("not stored after the pull: %w", err)
	}
	return nil
}

// pullProgress serializes progress reports of concurrent blob reads.
type pullProgress struct {
	fn func(Progress)
	mu sync.Mutex
	p  Progress
}

func (p *pullProgress) report(update func(*Progress)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	update(&p.p)
	if p.fn != nil {
		p.fn(p.p)
	}
}

// progressWriter counts the bytes of blob bodies read and discards them.
type progressWriter struct{ p *pullProgress }

func (w progressWriter) Write(b []byte) (int, error) {
	w.p.report(func(pr *Progress) { pr.Done += int64(len(b)) })
	return len(b), nil
}
