package blobstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
)

// RemoveStats tells what RemoveImage did.
type RemoveStats struct {
	Untagged []string // tags removed
	// Removed: the repository no longer holds the image (false: another
	// tag of the repository still points at it).
	Removed bool
	// Shared: the manifest stays, as another image (or a pin) uses it.
	Shared   bool
	Blobs    int   // blobs deleted
	Bytes    int64 // bytes deleted
	Unpinned bool
}

// RemoveImage removes image d from repo: tag (or, when tag is "", every tag
// of repo pointing at d), then, unless another tag of repo still points at
// d, the image itself: its manifests and the blobs they name that no other
// image uses and no other pin protects. An image the user removes loses its
// pin unless it is still an image elsewhere. Blobs busy reports stay (they
// are evicted later). It removes through s: given the node's announcing
// store, what goes is withdrawn from the fleet.
func RemoveImage(ctx context.Context, s Store, repo, tag string, d digest.Digest, busy func(digest.Digest) bool) (RemoveStats, error) {
	var st RemoveStats
	if busy == nil {
		busy = func(digest.Digest) bool { return false }
	}
	c, err := LoadCatalog(ctx, s)
	if err != nil {
		return st, err
	}
	img, _ := c.Find(repo, d)
	tags := []string{tag}
	if tag == "" {
		tags = img.Tags
	}
	for _, t := range tags {
		// Only while it names d: a tag re-pushed meanwhile, or already
		// removed, is not this image's.
		err := s.UntagIf(ctx, repo, t, d)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("untag %s:%s: %w", repo, t, err)
		}
		st.Untagged = append(st.Untagged, t)
	}
	if named, err := tagged(ctx, s, repo, d); err != nil || named {
		return st, err // another tag of repo still names it
	}
	st.Removed = true
	// What every other image, and every other pin, still needs.
	keep := map[digest.Digest]bool{}
	elsewhere := []string{} // other repositories holding d as an image
	for _, o := range c.Images {
		if o.Repo == repo && o.Digest == d {
			continue
		}
		if o.Digest == d {
			elsewhere = append(elsewhere, o.Repo)
		}
		for _, x := range c.Closure(o.Digest, "") {
			keep[x] = true
		}
	}
	for p := range c.pins {
		if p == d && len(elsewhere) == 0 {
			continue
		}
		for _, x := range c.Closure(p, "") {
			keep[x] = true
		}
	}
	if keep[d] {
		st.Shared = true
		// Still needed: only drop repo's record when another repository
		// links d (Unlink deletes the blob with its last link).
		for _, other := range elsewhere {
			if ok, err := s.Linked(ctx, other, d); err == nil && ok {
				if err := s.Unlink(ctx, repo, d); err != nil && !errors.Is(err, ErrNotFound) {
					return st, fmt.Errorf("unlink %s@%s: %w", repo, d, err)
				}
				break
			}
		}
		return st, nil
	}
	if c.pins[d] {
		if err := s.Unpin(ctx, d); err != nil && !errors.Is(err, ErrNotFound) {
			return st, err
		}
		st.Unpinned = true
	}
	for _, x := range c.Closure(d, "") { // manifests first
		size, ok := c.Has(x)
		if !ok || keep[x] || busy(x) {
			continue
		}
		err := s.Delete(ctx, x)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("delete %s: %w", x, err)
		}
		st.Blobs++
		st.Bytes += size
	}
	return st, nil
}

// tagged reports whether a tag of repo points at d now.
func tagged(ctx context.Context, s Store, repo string, d digest.Digest) (bool, error) {
	tags, err := s.Tags(ctx, repo)
	if err != nil {
		return false, err
	}
	for _, t := range tags {
		if at, err := s.Resolve(ctx, repo, t); err == nil && at == d {
			return true, nil
		}
	}
	return false, nil
}
