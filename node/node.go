package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/upstream"
)

// Upstream is what the node needs from origin registries; *upstream.Client
// implements it.
type Upstream interface {
	Resolve(ns string) (upstream.Registry, error)
	Manifest(ctx context.Context, ns, repo, ref string, head bool) (upstream.Manifest, error)
	Blob(ctx context.Context, ns, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error)
	StatBlob(ctx context.Context, ns, repo string, d digest.Digest) (int64, error)
	Tags(ctx context.Context, ns, repo string) ([]string, error)
}

// Options configure a Node.
type Options struct {
	Store    blobstore.Store
	Upstream Upstream // nil: serve local content only
	Logger   *slog.Logger
	// TagTimeout bounds asking upstream what a tag points at; past it the
	// local tag index answers. Default 3s.
	TagTimeout time.Duration
	// IdleTimeout aborts a download that received no byte for this long.
	// Default 30s.
	IdleTimeout time.Duration
	Registerer  prometheus.Registerer
}

// Node is the fetch policy of one device: local store, then upstream.
type Node struct {
	store blobstore.Store
	up    Upstream
	log   *slog.Logger
	opts  Options
	m     *metrics

	mu        sync.Mutex
	downloads map[digest.Digest]*download
	closed    bool
	wg        sync.WaitGroup
}

// New returns a Node. It starts no goroutine until a download begins.
func New(opts Options) *Node {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.TagTimeout <= 0 {
		opts.TagTimeout = 3 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 30 * time.Second
	}
	return &Node{
		store:     opts.Store,
		up:        opts.Upstream,
		log:       opts.Logger,
		opts:      opts,
		m:         newMetrics(opts.Registerer),
		downloads: map[digest.Digest]*download{},
	}
}

// Close aborts downloads in flight and waits for them to end.
func (n *Node) Close() error {
	n.mu.Lock()
	n.closed = true
	for _, dl := range n.downloads {
		dl.cancel()
	}
	n.mu.Unlock()
	n.wg.Wait()
	return nil
}

// Key is the store repository that holds name's tags and links: the registry
// name and the repository, so that library/nginx of two registries never mix.
// Requests without ns use the default upstream's name; with no upstream at
// all the key is the bare repository.
func (n *Node) Key(name Name) string {
	ns := name.NS
	if ns == "" && n.up != nil {
		if reg, err := n.up.Resolve(""); err == nil {
			ns = reg.Name
		}
	}
	if ns == "" {
		return name.Repo
	}
	return ns + "/" + name.Repo
}

// mirrors reports whether name's registry has an upstream: then content
// already in the store (verified by digest) serves any repository.
func (n *Node) mirrors(name Name) bool {
	if n.up == nil {
		return false
	}
	_, err := n.up.Resolve(name.NS)
	return err == nil
}

// localBlob opens d for name if the store has it and name may see it.
func (n *Node) localBlob(ctx context.Context, name Name, d digest.Digest) (blobstore.Blob, bool, error) {
	key := n.Key(name)
	linked, err := n.store.Linked(ctx, key, d)
	if err != nil {
		return nil, false, err
	}
	if !linked {
		if !n.mirrors(name) {
			return nil, false, nil
		}
		if _, err := n.store.Stat(ctx, d); err != nil {
			if errors.Is(err, blobstore.ErrNotFound) {
				return nil, false, nil
			}
			return nil, false, err
		}
		if err := n.store.Link(ctx, key, d); err != nil {
			return nil, false, notFoundIsMiss(err)
		}
	}
	b, err := n.store.Open(ctx, d)
	if err != nil {
		return nil, false, notFoundIsMiss(err)
	}
	return b, true, nil
}

// notFoundIsMiss turns a race with a concurrent delete into a plain miss.
func notFoundIsMiss(err error) error {
	if errors.Is(err, blobstore.ErrNotFound) {
		return nil
	}
	return err
}

// upstreamErr classifies an upstream failure for the API: not found stays
// not found, anything else is an upstream failure.
func upstreamErr(what string, err error) error {
	switch {
	case errors.Is(err, upstream.ErrNotFound), errors.Is(err, upstream.ErrNoUpstream):
		return fmt.Errorf("%s: %w (%v)", what, blobstore.ErrNotFound, err)
	default:
		return fmt.Errorf("%s: %w: %v", what, ErrUpstream, err)
	}
}

func isDigest(ref string) bool { return strings.Contains(ref, ":") }
