package blobstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// kindPin keys: p digest. purge drops a blob's pin with its other entries.
const kindPin = "p"

// Pin keeps manifest d, and what it names, from eviction. d must be indexed
// as a manifest in some repository.
func (f *Files) Pin(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durable(func(txn *badger.Txn) error {
		if !isManifest(txn, d) {
			return fmt.Errorf("pin manifest %s: %w", d, ErrNotFound)
		}
		return txn.Set(key(kindPin, string(d)), nil)
	})
}

// isManifest reports whether blob d exists and some repository indexes it
// as a manifest.
func isManifest(txn *badger.Txn, d digest.Digest) bool {
	if _, err := getMeta(txn, d); err != nil {
		return false
	}
	for _, repo := range suffixes(txn, prefix(kindLinkRev, string(d))) {
		if _, err := txn.Get(key(kindManifest, repo, string(d))); err == nil {
			return true
		}
	}
	return false
}

// Unpin removes d's pin, or ErrNotFound.
func (f *Files) Unpin(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durableRemoval(func(txn *badger.Txn) error {
		if _, err := txn.Get(key(kindPin, string(d))); err != nil {
			return notFound(err, "pin %s", d)
		}
		return txn.Delete(key(kindPin, string(d)))
	})
}

// Pins lists the pinned digests in digest order.
func (f *Files) Pins(context.Context) ([]digest.Digest, error) {
	out := []digest.Digest{}
	err := f.db.View(func(txn *badger.Txn) error {
		for _, s := range suffixes(txn, prefix(kindPin)) {
			out = append(out, digest.Digest(s))
		}
		return nil
	})
	return out, err
}

// WalkManifests calls fn for every manifest record of every repository.
func (f *Files) WalkManifests(ctx context.Context, fn func(repo string, m Manifest) error) error {
	type rec struct {
		repo string
		m    Manifest
	}
	var all []rec
	err := f.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix(kindManifest)})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			parts := strings.Split(string(it.Item().Key()), "\x00")
			if len(parts) != 3 {
				continue
			}
			var m Manifest
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &m) }); err != nil {
				return fmt.Errorf("manifest %s@%s: %w", parts[1], parts[2], err)
			}
			all = append(all, rec{parts[1], m})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, r := range all { // outside the transaction: fn may write
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(r.repo, r.m); err != nil {
			return err
		}
	}
	return nil
}
