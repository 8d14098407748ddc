package blobstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Index keys are kind byte + NUL-separated parts. Repository names, tags and
// digests never contain NUL (checkName enforces it), so a prefix of
// "repo\x00" never matches "repo/sub".
const (
	kindMeta     = "b" // b digest → Meta
	kindLink     = "l" // l repo digest
	kindLinkRev  = "L" // L digest repo
	kindManifest = "m" // m repo digest → Manifest JSON
	kindReferrer = "r" // r repo subject digest
	kindTag      = "t" // t repo tag → digest
	kindTagRev   = "T" // T digest repo tag
)

func key(parts ...string) []byte { return []byte(strings.Join(parts, "\x00")) }

func prefix(parts ...string) []byte { return append(key(parts...), 0) }

func checkName(what, s string) error {
	if s == "" || strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("invalid %s %q", what, s)
	}
	return nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf(format+": %w", append(args, ErrNotFound)...)
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}

func getMeta(txn *badger.Txn, d digest.Digest) (Meta, error) {
	item, err := txn.Get(key(kindMeta, string(d)))
	if err != nil {
		return Meta{}, notFound(err, "blob %s", d)
	}
	var m Meta
	err = item.Value(func(v []byte) error {
		if len(v) != 24 {
			return fmt.Errorf("blob %s: corrupt index record", d)
		}
		m.Size = int64(binary.BigEndian.Uint64(v))
		m.Created = time.Unix(0, int64(binary.BigEndian.Uint64(v[8:])))
		m.Accessed = time.Unix(0, int64(binary.BigEndian.Uint64(v[16:])))
		return nil
	})
	return m, err
}

func putMeta(txn *badger.Txn, d digest.Digest, m Meta) error {
	v := make([]byte, 24)
	binary.BigEndian.PutUint64(v, uint64(m.Size))
	binary.BigEndian.PutUint64(v[8:], uint64(m.Created.UnixNano()))
	binary.BigEndian.PutUint64(v[16:], uint64(m.Accessed.UnixNano()))
	return txn.Set(key(kindMeta, string(d)), v)
}

// suffixes returns what follows pfx in every key starting with it.
func suffixes(txn *badger.Txn, pfx []byte) []string {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: pfx})
	defer it.Close()
	var out []string
	for it.Rewind(); it.Valid(); it.Next() {
		out = append(out, string(it.Item().Key()[len(pfx):]))
	}
	return out
}

func getManifest(txn *badger.Txn, repo string, d digest.Digest) (Manifest, error) {
	item, err := txn.Get(key(kindManifest, repo, string(d)))
	if err != nil {
		return Manifest{}, notFound(err, "manifest %s@%s", repo, d)
	}
	var m Manifest
	if err := item.Value(func(v []byte) error { return json.Unmarshal(v, &m) }); err != nil {
		return Manifest{}, fmt.Errorf("manifest %s@%s: %w", repo, d, err)
	}
	return m, nil
}

// drop removes repo's link to d, its manifest record, referrer entry and
// tags pointing at d.
func drop(txn *badger.Txn, repo string, d digest.Digest) error {
	dels := [][]byte{key(kindLink, repo, string(d)), key(kindLinkRev, string(d), repo)}
	m, err := getManifest(txn, repo, d)
	switch {
	case err == nil:
		dels = append(dels, key(kindManifest, repo, string(d)))
		if m.Subject != "" {
			dels = append(dels, key(kindReferrer, repo, string(m.Subject), string(d)))
		}
	case !errors.Is(err, ErrNotFound):
		return err
	}
	for _, tag := range suffixes(txn, prefix(kindTagRev, string(d), repo)) {
		dels = append(dels, key(kindTag, repo, tag), key(kindTagRev, string(d), repo, tag))
	}
	for _, k := range dels {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// purge removes every index entry of blob d, in every repository (tags
// included where the repository holds no link to d).
func purge(txn *badger.Txn, d digest.Digest) error {
	repos := map[string]bool{}
	for _, repo := range suffixes(txn, prefix(kindLinkRev, string(d))) {
		repos[repo] = true
	}
	for _, rest := range suffixes(txn, prefix(kindTagRev, string(d))) {
		repo, _, _ := strings.Cut(rest, "\x00")
		repos[repo] = true
	}
	for repo := range repos {
		if err := drop(txn, repo, d); err != nil {
			return err
		}
	}
	if err := txn.Delete(key(kindPin, string(d))); err != nil { // a deleted manifest is no longer pinned
		return err
	}
	return txn.Delete(key(kindMeta, string(d)))
}

// mutate runs fn in an index transaction under f.mu after checking that blob
// d exists.
func (f *Files) mutate(d digest.Digest, fn func(*badger.Txn) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.Stat(context.Background(), d); err != nil {
		return err
	}
	return f.durable(fn)
}

// durable runs fn in an index transaction and syncs the index to disk before
// returning: links, manifest records and tags cannot be rebuilt from the blob
// files. (Blob metadata can: reconcile restores it, so those writes skip the
// sync.)
func (f *Files) durable(fn func(*badger.Txn) error) error {
	if err := f.update(fn); err != nil {
		return err
	}
	return f.db.Sync()
}

// durableRemoval is durable for a change that removes: it runs on a full
// disk too, since removing is how space comes back.
func (f *Files) durableRemoval(fn func(*badger.Txn) error) error {
	if err := f.db.Update(fn); err != nil {
		return err
	}
	return f.db.Sync()
}

// Link records that repo references blob d.
func (f *Files) Link(_ context.Context, repo string, d digest.Digest) error {
	if err := errors.Join(checkName("repository", repo), CheckDigest(d)); err != nil {
		return err
	}
	return f.mutate(d, func(txn *badger.Txn) error { return setLink(txn, repo, d) })
}

func setLink(txn *badger.Txn, repo string, d digest.Digest) error {
	return errors.Join(txn.Set(key(kindLink, repo, string(d)), nil), txn.Set(key(kindLinkRev, string(d), repo), nil))
}

// Linked reports whether repo references d.
func (f *Files) Linked(_ context.Context, repo string, d digest.Digest) (bool, error) {
	err := f.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(key(kindLink, repo, string(d)))
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Unlink removes repo's link to d with its manifest record, tags and
// referrer entry there; the blob is deleted when no repository links it.
func (f *Files) Unlink(_ context.Context, repo string, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var last bool
	err := f.durableRemoval(func(txn *badger.Txn) error {
		if _, err := txn.Get(key(kindLink, repo, string(d))); err != nil {
			return notFound(err, "link %s@%s", repo, d)
		}
		if err := drop(txn, repo, d); err != nil {
			return err
		}
		last = len(suffixes(txn, prefix(kindLinkRev, string(d)))) == 0
		return nil
	})
	if err != nil || !last {
		return err
	}
	return f.deleteLocked(d, false)
}

// PutManifest indexes committed blob m.Digest as a manifest of repo and links it.
func (f *Files) PutManifest(_ context.Context, repo string, m Manifest) error {
	if err := errors.Join(checkName("repository", repo), CheckDigest(m.Digest)); err != nil {
		return err
	}
	rec, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("manifest %s@%s: %w", repo, m.Digest, err)
	}
	d := string(m.Digest)
	return f.mutate(m.Digest, func(txn *badger.Txn) error {
		old, err := getManifest(txn, repo, m.Digest)
		if err == nil && old.Subject != "" {
			if err := txn.Delete(key(kindReferrer, repo, string(old.Subject), d)); err != nil {
				return err
			}
		}
		if m.Subject != "" {
			if err := txn.Set(key(kindReferrer, repo, string(m.Subject), d), nil); err != nil {
				return err
			}
		}
		return errors.Join(setLink(txn, repo, m.Digest), txn.Set(key(kindManifest, repo, d), rec))
	})
}

// GetManifest returns the manifest record of d in repo, or ErrNotFound.
func (f *Files) GetManifest(_ context.Context, repo string, d digest.Digest) (Manifest, error) {
	var m Manifest
	err := f.db.View(func(txn *badger.Txn) (err error) {
		m, err = getManifest(txn, repo, d)
		return err
	})
	return m, err
}

// Referrers lists repo's manifests whose subject is subject, in digest
// order; an empty (non-nil) list if none.
func (f *Files) Referrers(_ context.Context, repo string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	out := []ocispec.Descriptor{}
	err := f.db.View(func(txn *badger.Txn) error {
		for _, d := range suffixes(txn, prefix(kindReferrer, repo, string(subject))) {
			m, err := getManifest(txn, repo, digest.Digest(d))
			if err != nil {
				return err
			}
			out = append(out, m.Descriptor())
		}
		return nil
	})
	return out, err
}

// Tag points repo:tag at blob d, which must exist.
func (f *Files) Tag(_ context.Context, repo, tag string, d digest.Digest) error {
	if err := errors.Join(checkName("repository", repo), checkName("tag", tag), CheckDigest(d)); err != nil {
		return err
	}
	return f.mutate(d, func(txn *badger.Txn) error {
		if old, err := resolve(txn, repo, tag); err == nil {
			if err := txn.Delete(key(kindTagRev, string(old), repo, tag)); err != nil {
				return err
			}
		}
		return errors.Join(txn.Set(key(kindTag, repo, tag), []byte(d)), txn.Set(key(kindTagRev, string(d), repo, tag), nil))
	})
}

func resolve(txn *badger.Txn, repo, tag string) (digest.Digest, error) {
	item, err := txn.Get(key(kindTag, repo, tag))
	if err != nil {
		return "", notFound(err, "tag %s:%s", repo, tag)
	}
	v, err := item.ValueCopy(nil)
	return digest.Digest(v), err
}

// Resolve returns the manifest digest of repo:tag, or ErrNotFound.
func (f *Files) Resolve(_ context.Context, repo, tag string) (digest.Digest, error) {
	var d digest.Digest
	err := f.db.View(func(txn *badger.Txn) (err error) {
		d, err = resolve(txn, repo, tag)
		return err
	})
	return d, err
}

// Tags lists repo's tags in lexical (byte) order.
func (f *Files) Tags(_ context.Context, repo string) ([]string, error) {
	tags := []string{}
	err := f.db.View(func(txn *badger.Txn) error {
		tags = append(tags, suffixes(txn, prefix(kindTag, repo))...)
		return nil
	})
	return tags, err
}

// Untag removes repo:tag, or ErrNotFound.
func (f *Files) Untag(_ context.Context, repo, tag string) error {
	return f.untag(repo, tag, "")
}

// UntagIf removes repo:tag if it points at d, else ErrNotFound.
func (f *Files) UntagIf(_ context.Context, repo, tag string, d digest.Digest) error {
	return f.untag(repo, tag, d)
}

// untag removes repo:tag if it points at want ("": whatever it points at).
func (f *Files) untag(repo, tag string, want digest.Digest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durableRemoval(func(txn *badger.Txn) error {
		d, err := resolve(txn, repo, tag)
		if err != nil {
			return err
		}
		if want != "" && d != want {
			return fmt.Errorf("tag %s:%s points at %s, not %s: %w", repo, tag, d, want, ErrNotFound)
		}
		return errors.Join(txn.Delete(key(kindTag, repo, tag)), txn.Delete(key(kindTagRev, string(d), repo, tag)))
	})
}

// WalkTags calls fn for every tag of every repository.
func (f *Files) WalkTags(_ context.Context, fn func(repo, tag string, d digest.Digest) error) error {
	type tagged struct {
		repo, tag string
		d         digest.Digest
	}
	var all []tagged
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix(kindTag)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := strings.Split(string(it.Item().Key()), "\x00")
			if len(parts) != 3 {
				continue
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			all = append(all, tagged{parts[1], parts[2], digest.Digest(v)})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range all { // outside the transaction: fn may write
		if err := fn(t.repo, t.tag, t.d); err != nil {
			return err
		}
	}
	return nil
}
