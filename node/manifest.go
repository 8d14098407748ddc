package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/upstream"
)

// MaxManifestSize bounds every manifest the node reads or accepts.
const MaxManifestSize = 4 << 20

// Manifest resolves ref (tag or digest) in name: tags at upstream first with
// a short timeout, then the local index; digests from the store, then
// upstream. What upstream serves is verified and stored before it is served.
func (n *Node) Manifest(ctx context.Context, name Name, ref string, head bool) (Manifest, error) {
	m, err := n.manifest(ctx, name, ref, head)
	if head && err != nil {
		// crane and containerd ask for the manifest by tag and digest
		// before they push it.
		return Manifest{}, n.unknownToHead(ctx, fmt.Sprintf("manifest %s:%s", name.Repo, ref), err)
	}
	return m, err
}

func (n *Node) manifest(ctx context.Context, name Name, ref string, head bool) (Manifest, error) {
	d := digest.Digest(ref)
	if !isDigest(ref) {
		var err error
		if d, err = n.resolveTag(ctx, name, ref); err != nil {
			return Manifest{}, err
		}
	}
	if head { // a question: answered within the tag budget, like a tag
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, n.opts.TagTimeout)
		defer cancel()
	}
	// Eviction spares the manifest while it is fetched, stored and read
	// back for this request.
	n.readers.add(d)
	m, err := n.manifestByDigest(ctx, name, d)
	n.readers.done(d)
	if err == nil && !head {
		n.readAhead(ctx, name, m)
	}
	return m, err
}

// maxReadAhead bounds the blobs one manifest starts fetching ahead.
const maxReadAhead = 64

// readAhead starts fetching the config and layers of an image manifest a
// client just read, in a fleet with ReadAhead on: the client will ask for
// them next, a few at a time (containerd: 3), and a rollout keeps the
// uplink and the swarm busy with every layer at once instead of waiting for
// the client's next request.
func (n *Node) readAhead(ctx context.Context, name Name, m Manifest) {
	if !n.opts.ReadAhead || !n.meshed() || len(m.Body) == 0 {
		return
	}
	var doc struct {
		Config ocispec.Descriptor   `json:"config"`
		Layers []ocispec.Descriptor `json:"layers"`
	}
	if json.Unmarshal(m.Body, &doc) != nil || doc.Config.Digest == "" || len(doc.Layers) > maxReadAhead {
		return // an index, or not an image manifest
	}
	for _, desc := range append(doc.Layers, doc.Config) {
		if blobstore.CheckDigest(desc.Digest) != nil {
			continue
		}
		if _, err := n.store.Stat(ctx, desc.Digest); err == nil {
			continue
		}
		n.join(ctx, name, desc.Digest)
	}
}

// resolveTag asks upstream what tag points at (bounded by TagTimeout) and
// falls back to the local index when upstream is unreachable or has no such
// tag (a tag pushed straight to the node).
func (n *Node) resolveTag(ctx context.Context, name Name, tag string) (digest.Digest, error) {
	key := n.Key(name)
	var upErr error // why upstream did not answer, if it did not
	if n.mirrors(name) {
		tctx, cancel := context.WithTimeout(ctx, n.opts.TagTimeout)
		m, err := n.up.Manifest(tctx, name.NS, name.Repo, tag, true)
		cancel()
		if err == nil {
			n.m.upstreamRequests.WithLabelValues("tag", "ok").Inc()
			if err := n.ensureManifest(ctx, name, m.Digest); err != nil {
				return "", err
			}
			if cur, err := n.store.Resolve(ctx, key, tag); err != nil || cur != m.Digest {
				if err := n.store.Tag(ctx, key, tag, m.Digest); errors.Is(err, blobstore.ErrNoSpace) {
					// The upstream's answer stands; the local index catches up later.
					n.log.Warn("tag not recorded", "repo", key, "tag", tag, "err", err)
				} else if err != nil {
					return "", fmt.Errorf("tag %s:%s: %w", key, tag, err)
				}
			}
			return m.Digest, nil
		}
		n.m.upstreamRequests.WithLabelValues("tag", "error").Inc()
		upErr = err
		n.log.LogAttrs(ctx, levelFor(err), "tag not resolved upstream, using local index",
			slog.String("repo", key), slog.String("tag", tag), slog.String("err", err.Error()))
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
	}
	d, err := n.store.Resolve(ctx, key, tag)
	if err == nil {
		return d, nil
	}
	if !errors.Is(err, blobstore.ErrNotFound) {
		return "", err
	}
	if d, ok := n.tagFromPeers(ctx, name, tag); ok {
		return d, nil
	}
	if upErr != nil && !errors.Is(upErr, upstream.ErrDenied) {
		// Unknown here, and upstream could not say: "unavailable", as for a
		// blob, not "unknown", which would blame the tag. An upstream that
		// refused access did answer: Docker Hub says 401 to an anonymous
		// client for a repository it does not have (a typo).
		return "", upstreamErr(fmt.Sprintf("manifest %s:%s", name.Repo, tag), upErr)
	}
	return "", fmt.Errorf("manifest %s:%s: %w", name.Repo, tag, err)
}

// tagFromPeers asks holders of the tag key what it points at: a tag pushed
// to one node resolves on every node, with no upstream at all. The digest is
// only a pointer: the manifest it names is verified when fetched.
func (n *Node) tagFromPeers(ctx context.Context, name Name, tag string) (digest.Digest, bool) {
	key := n.Key(name)
	for _, h := range n.holders(ctx, p2p.TagKey(key, tag), n.opts.MaxHolders) {
		d, err := n.peers.Tag(ctx, h.DataURL, key, tag)
		if err != nil || blobstore.CheckDigest(d) != nil {
			continue
		}
		if _, err := n.manifestByDigest(ctx, name, d); err != nil {
			continue
		}
		if err := n.store.Tag(ctx, key, tag, d); err != nil {
			n.log.Warn("keep tag from peer", "repo", key, "tag", tag, "err", err)
		}
		return d, true
	}
	return "", false
}

// ensureManifest makes sure manifest d is in the store for name.
func (n *Node) ensureManifest(ctx context.Context, name Name, d digest.Digest) error {
	if _, err := n.store.GetManifest(ctx, n.Key(name), d); err == nil {
		return nil
	}
	_, err := n.manifestByDigest(ctx, name, d)
	return err
}

// manifestByDigest serves d from the store (adopting content another
// repository of a mirrored registry already holds), else from a holder in
// the fleet, else from upstream. What comes from elsewhere is verified and
// stored before it is served.
func (n *Node) manifestByDigest(ctx context.Context, name Name, d digest.Digest) (Manifest, error) {
	if err := blobstore.CheckDigest(d); err != nil {
		return Manifest{}, err
	}
	key := n.Key(name)
	rec, err := n.store.GetManifest(ctx, key, d)
	if err == nil {
		return n.readManifest(ctx, rec)
	}
	if !errors.Is(err, blobstore.ErrNotFound) {
		return Manifest{}, err
	}
	if n.mirrors(name) {
		if b, ok, err := n.localBlob(ctx, name, d); err != nil {
			return Manifest{}, err
		} else if ok {
			body, err := readAllLimited(b, MaxManifestSize)
			b.Close()
			if err == nil {
				return n.putManifest(ctx, key, d, "", body)
			}
		}
	}
	if body, ok := n.manifestFromPeers(ctx, d); ok {
		if err := n.storeBytes(ctx, d, body); err != nil {
			return Manifest{}, err
		}
		return n.putManifest(ctx, key, d, "", body)
	}
	if !n.mirrors(name) {
		return Manifest{}, fmt.Errorf("manifest %s@%s: %w", name.Repo, d, blobstore.ErrNotFound)
	}
	m, err := n.up.Manifest(ctx, name.NS, name.Repo, d.String(), false)
	if err != nil {
		n.m.upstreamRequests.WithLabelValues("manifest", "error").Inc()
		return Manifest{}, upstreamErr(fmt.Sprintf("manifest %s@%s", name.Repo, d), err)
	}
	n.m.upstreamRequests.WithLabelValues("manifest", "ok").Inc()
	if err := blobstore.Verify(m.Body, -1, d); err != nil {
		return Manifest{}, fmt.Errorf("manifest %s@%s from upstream: %w: %v", name.Repo, d, ErrUpstream, err)
	}
	if err := n.storeBytes(ctx, d, m.Body); err != nil {
		return Manifest{}, err
	}
	return n.putManifest(ctx, key, d, m.MediaType, m.Body)
}

// manifestFromPeers reads manifest d from a holder in the fleet, verified.
func (n *Node) manifestFromPeers(ctx context.Context, d digest.Digest) ([]byte, bool) {
	for _, h := range n.holders(ctx, d.String(), n.opts.MaxHolders) {
		body, _, err := n.peers.Blob(ctx, h.DataURL, d, 0)
		if err != nil {
			continue
		}
		b, err := readAllLimited(body, MaxManifestSize)
		body.Close()
		if err == nil && blobstore.Verify(b, -1, d) == nil {
			n.m.fetches.WithLabelValues("peer", "ok").Inc()
			return b, true
		}
		n.m.fetches.WithLabelValues("peer", "error").Inc()
	}
	return nil, false
}

// putManifest indexes stored manifest bytes under key.
func (n *Node) putManifest(ctx context.Context, key string, d digest.Digest, mediaType string, body []byte) (Manifest, error) {
	if mt := blobstore.BodyMediaType(body); mt != "" {
		mediaType = mt // the body knows better than a proxy's Content-Type
	}
	if mediaType == "" {
		mediaType = "application/vnd.oci.image.manifest.v1+json"
	}
	rec, err := blobstore.ParseManifest(body, mediaType, d)
	if err != nil {
		return Manifest{}, fmt.Errorf("manifest %s@%s: %w", key, d, err)
	}
	if err := n.store.PutManifest(ctx, key, rec); err != nil {
		return Manifest{}, fmt.Errorf("index manifest %s@%s: %w", key, d, err)
	}
	return Manifest{Digest: d, MediaType: rec.MediaType, Size: rec.Size, Body: body}, nil
}

func (n *Node) readManifest(ctx context.Context, rec blobstore.Manifest) (Manifest, error) {
	b, err := n.store.Open(ctx, rec.Digest)
	if err != nil {
		return Manifest{}, err
	}
	n.store.Touch(ctx, rec.Digest) // every pull reads the manifest: the image's age for eviction
	defer b.Close()
	body, err := readAllLimited(b, MaxManifestSize)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest %s: %w", rec.Digest, err)
	}
	return Manifest{Digest: rec.Digest, MediaType: rec.MediaType, Size: int64(len(body)), Body: body}, nil
}

// storeBytes commits small verified content (manifests) to the store.
func (n *Node) storeBytes(ctx context.Context, d digest.Digest, body []byte) error {
	w, err := n.ingest.NewWriter(ctx)
	if err != nil {
		return err
	}
	if _, err := w.Write(body); err != nil {
		w.Cancel()
		return err
	}
	if _, err = w.Commit(ctx, int64(len(body)), d); err != nil {
		return err
	}
	n.announce(d)
	return nil
}

func readAllLimited(r io.Reader, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("manifest larger than %d bytes", limit)
	}
	return buf.Bytes(), nil
}

// levelFor logs an unreachable upstream as a warning, a missing tag quietly.
func levelFor(err error) slog.Level {
	if errors.Is(err, upstream.ErrNotFound) || errors.Is(err, upstream.ErrNoUpstream) {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}
