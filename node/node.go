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

	// Router and Peers make the node part of a fleet: content is looked up
	// among the fleet's holders before upstream. Both nil: a lone node.
	Router Router
	Peers  Peers
	// LookupTimeout bounds asking the fleet who holds a key; a miss spends
	// all of it (default 15ms: on a LAN the DHT answers a hit in about a
	// millisecond; a miss must stay cheap).
	LookupTimeout time.Duration
	// MaxHolders is how many holders a lookup asks for (default 3).
	MaxHolders int
	// AnnounceWait bounds how long a push's commit waits for its
	// announcement to the fleet before it answers (default
	// 100ms: a healthy LAN takes a few; silent peers must not cost more).
	// A lookup elsewhere keeps asking within its budget, so a late
	// announcement is still found.
	AnnounceWait time.Duration
	// HedgeDelay: when a holder has not answered within it, the next holder
	// is asked as well (default 50ms). UpstreamHedgeDelay is the same before
	// also asking upstream while holders are silent (default 2s).
	HedgeDelay, UpstreamHedgeDelay time.Duration

	// Members is the live fleet, for ranking which member fetches a blob
	// from upstream for everyone; nil: this node fetches what no holder has.
	Members Members
	// StallTimeout: when no piece arrived for this long and no holder has
	// what is missing, the fetcher is presumed gone and the next in rank is
	// asked (default 3s).
	StallTimeout time.Duration
	// SwarmWindow is how many pieces past the first missing one may be
	// fetched at once (default 32: 32 MiB of memory per blob at most).
	SwarmWindow int
	// ReadAhead: in a fleet, reading an image manifest starts fetching its
	// config and layers that the store lacks.
	ReadAhead bool
	// Throttle, if set, wraps every body the node downloads (the download
	// rate cap).
	Throttle func(ctx context.Context, r io.Reader) io.Reader
}

// Node is the fetch policy of one device: local store, then upstream.
type Node struct {
	store   blobstore.Store // what everyone uses: announces pushes (waiting for it) in a fleet
	ingest  blobstore.Store // the store itself: the node's own downloads, announced without waiting
	up      Upstream
	router  Router
	peers   Peers
	members Members
	log     *slog.Logger
	opts    Options
	m       *metrics

	announcer *announcer // nil when not in a fleet
	bad       *badHolders
	quiet     quietMembers // members that did not answer a recent miss in time
	hashes    hashCache    // piece hashes of stored blobs peers asked for

	readers readers // open readers of downloads (busy.go)
	// pieceSlots bounds the piece requests to peers in flight at once, over
	// all of the node's downloads.
	pieceSlots chan struct{}

	mu        sync.Mutex
	downloads map[digest.Digest]*download
	closed    bool
	wg        sync.WaitGroup
}

// New returns a Node. In a fleet (Router set) it starts one goroutine that
// announces the store's content; otherwise none until a download begins.
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
	if opts.LookupTimeout <= 0 {
		opts.LookupTimeout = 15 * time.Millisecond
	}
	if opts.AnnounceWait <= 0 {
		opts.AnnounceWait = 100 * time.Millisecond
	}
	if opts.MaxHolders <= 0 {
		opts.MaxHolders = 3
	}
	if opts.HedgeDelay <= 0 {
		opts.HedgeDelay = 50 * time.Millisecond
	}
	if opts.UpstreamHedgeDelay <= 0 {
		opts.UpstreamHedgeDelay = 2 * time.Second
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 3 * time.Second
	}
	if opts.SwarmWindow <= 0 {
		opts.SwarmWindow = 32
	}
	n := &Node{
		store:      opts.Store,
		ingest:     opts.Store,
		up:         opts.Upstream,
		router:     opts.Router,
		peers:      opts.Peers,
		members:    opts.Members,
		log:        opts.Logger,
		opts:       opts,
		m:          newMetrics(opts.Registerer),
		downloads:  map[digest.Digest]*download{},
		bad:        newBadHolders(),
		pieceSlots: make(chan struct{}, maxPieceRequests),
	}
	if n.router != nil {
		ctx, stop := context.WithCancel(context.Background())
		n.announcer = &announcer{router: n.router, store: opts.Store, n: n, pending: map[string]bool{},
			wake: make(chan struct{}, 1), round: make(chan struct{}), stop: stop, done: make(chan struct{})}
		n.store = advertiser{Store: opts.Store, a: n.announcer}
		go n.announcer.run(ctx)
	}
	return n
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
	if n.announcer != nil {
		n.announcer.stop()
		<-n.announcer.done
	}
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

// mirrors reports whether name's registry has an upstream.
func (n *Node) mirrors(name Name) bool {
	if n.up == nil {
		return false
	}
	_, err := n.up.Resolve(name.NS)
	return err == nil
}

// meshed reports whether the node can ask the fleet for content.
func (n *Node) meshed() bool { return n.router != nil && n.peers != nil }

// localBlob opens d for name if the store has it and name may see it.
func (n *Node) localBlob(ctx context.Context, name Name, d digest.Digest) (blobstore.Blob, bool, error) {
	key := n.Key(name)
	linked, err := n.store.Linked(ctx, key, d)
	if err != nil {
		return nil, false, err
	}
	if !linked {
		// Verified content serves any repository of a mirrored registry, and
		// any repository of a fleet member (peers would send the same bytes).
		if !n.mirrors(name) && !n.meshed() {
			return nil, false, nil
		}
		if _, err := n.store.Stat(ctx, d); err != nil {
			if errors.Is(err, blobstore.ErrNotFound) {
				return nil, false, nil
			}
			return nil, false, err
		}
		if err := n.store.Link(ctx, key, d); errors.Is(err, blobstore.ErrNoSpace) {
			// The bytes are here: a full disk keeps the link from being
			// recorded, not the blob from being served.
			n.log.Warn("serving a stored blob without linking it into its repository", "blob", d, "repo", key, "err", err)
		} else if err != nil {
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
