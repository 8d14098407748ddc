package blobstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// OrphanGrace: a blob that belongs to no image (a push whose manifest has
// not come yet, a manifest between its commit and its index record) is not
// evicted until it went unused this long.
const OrphanGrace = 10 * time.Minute

// EvictStats tells what one eviction did.
type EvictStats struct {
	Before, After int64 // store bytes
	Images        int   // images removed whole (manifests, tags and the blobs only they used)
	Blobs         int   // blobs deleted
	Bytes         int64 // bytes deleted
	SkippedBusy   int   // images (or orphan blobs) left because a blob was being fetched or served
	Duration      time.Duration
}

// evictUnit is what eviction removes at once: an image (its manifests and
// the blobs they name), or one orphan blob.
type evictUnit struct {
	root     digest.Digest // the image's top manifest; "" for an orphan blob
	tags     []repoTag
	blobs    []digest.Digest // present, manifests first
	accessed time.Time
}

type repoTag struct{ repo, tag string }

// Evict removes least recently used content until the store's usage is at
// most target. The rule:
//   - the unit is the image: its manifests (an index with its platform
//     manifests, and referrers) and the configs and layers they name. Its
//     age is the latest access of any of its manifests (every pull reads
//     them); blobs that belong to no image are units of their own, aged by
//     their own access, spared for OrphanGrace;
//   - an image goes whole, tags and manifests first, then the blobs no
//     other remaining image names: a tag never points at a manifest whose
//     content eviction removed, and an image `images ls` shows as complete
//     stays complete;
//   - never anything a pinned image names (Store.Pins, closed over index →
//     manifests → config and layers, and referrers), never an image one of
//     whose blobs busy reports (being fetched or served).
//
// It deletes through s: given the node's announcing store, what goes is
// withdrawn from the fleet. Eviction may stop short of target when pinned
// or busy content fills the store.
func Evict(ctx context.Context, s Store, target int64, busy func(digest.Digest) bool) (st EvictStats, err error) {
	begin := time.Now()
	defer func() { st.Duration = time.Since(begin) }()
	used, _, err := s.Usage(ctx)
	if err != nil {
		return st, err
	}
	st.Before, st.After = used, used
	if used <= target {
		return st, nil
	}
	if busy == nil {
		busy = func(digest.Digest) bool { return false }
	}
	c, err := LoadCatalog(ctx, s)
	if err != nil {
		return st, err
	}
	pinned := c.Protected()
	units, refs := c.evictUnits()
	for _, u := range units {
		if used <= target {
			break
		}
		if err := ctx.Err(); err != nil {
			return st, err
		}
		if u.root != "" && pinned[u.root] {
			continue
		}
		if u.root == "" && begin.Sub(u.accessed) < OrphanGrace {
			continue
		}
		if anyBusy(u.blobs, busy) {
			st.SkippedBusy++
			continue
		}
		if u.root != "" {
			// Pulled again since the snapshot: no longer least recent.
			if at, err := s.LastAccess(ctx, u.root); err == nil && at.After(u.accessed) {
				continue
			}
		}
		n, bytes, err := removeUnit(ctx, s, u, refs, pinned, c)
		st.Blobs += n
		st.Bytes += bytes
		if err != nil {
			return st, err
		}
		if u.root != "" {
			st.Images++
		}
		if used, _, err = s.Usage(ctx); err != nil {
			return st, err
		}
		st.After = used
	}
	return st, nil
}

func anyBusy(ds []digest.Digest, busy func(digest.Digest) bool) bool {
	for _, d := range ds {
		if busy(d) {
			return true
		}
	}
	return false
}

// evictUnits groups the store into units, least recently used first, and
// counts for every blob how many units hold it.
func (c *Catalog) evictUnits() ([]*evictUnit, map[digest.Digest]int) {
	byRoot := map[digest.Digest]*evictUnit{}
	refs := map[digest.Digest]int{}
	var units []*evictUnit
	for _, img := range c.Images {
		u := byRoot[img.Digest]
		if u == nil {
			u = &evictUnit{root: img.Digest}
			for _, d := range c.Closure(img.Digest, "") {
				if _, ok := c.present[d]; ok {
					u.blobs = append(u.blobs, d)
					refs[d]++
				}
			}
			byRoot[img.Digest] = u
			units = append(units, u)
		}
		for _, t := range img.Tags {
			u.tags = append(u.tags, repoTag{img.Repo, t})
		}
		if img.Accessed.After(u.accessed) {
			u.accessed = img.Accessed
		}
	}
	for d, b := range c.present {
		if refs[d] == 0 {
			refs[d] = 1
			units = append(units, &evictUnit{blobs: []digest.Digest{d}, accessed: b.accessed})
		}
	}
	units = slices.DeleteFunc(units, func(u *evictUnit) bool { return len(u.blobs) == 0 }) // committed after the walk
	sort.Slice(units, func(i, j int) bool {
		a, b := units[i], units[j]
		if !a.accessed.Equal(b.accessed) {
			return a.accessed.Before(b.accessed)
		}
		return a.blobs[0] < b.blobs[0]
	})
	return units, refs
}

// removeUnit untags u's root, then deletes its blobs (manifests first) that
// no other remaining unit holds, no pin protects, and nobody used since the
// snapshot c.
func removeUnit(ctx context.Context, s Store, u *evictUnit, refs map[digest.Digest]int, pinned map[digest.Digest]bool, c *Catalog) (int, int64, error) {
	repushed := false
	for _, t := range u.tags {
		// Only while it names the image: a tag re-pushed since the
		// snapshot stays.
		err := s.UntagIf(ctx, t.repo, t.tag, u.root)
		if errors.Is(err, ErrNotFound) {
			if _, rerr := s.Resolve(ctx, t.repo, t.tag); rerr == nil {
				repushed = true
			}
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("evict: untag %s:%s: %w", t.repo, t.tag, err)
		}
	}
	if repushed {
		// The new image may share blobs the snapshot counted as this
		// one's alone: the next pass sees both.
		return 0, 0, nil
	}
	var n int
	var bytes int64
	for _, d := range u.blobs {
		refs[d]--
		if refs[d] > 0 || pinned[d] {
			continue
		}
		if at, err := s.LastAccess(ctx, d); err == nil && at.After(c.present[d].accessed) {
			continue // committed or used again meanwhile (a push that shares it)
		}
		err := s.Delete(ctx, d)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return n, bytes, fmt.Errorf("evict: delete %s: %w", d, err)
		}
		size, _ := c.Has(d)
		n++
		bytes += size
	}
	return n, bytes, nil
}
