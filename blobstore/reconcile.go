package blobstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// reconcile brings the index in line with the blob files after a crash or a
// hand edit, and counts usage:
//   - a file without index record (crash between rename and index write) is
//     indexed: it was verified before the rename;
//   - an index record without file (crash inside Delete, file removed by
//     hand) is purged with its links, manifest records and tags.
func (f *Files) reconcile() error {
	added := 0
	for _, alg := range []digest.Algorithm{digest.SHA256, digest.SHA512} {
		n, err := f.indexOrphans(alg)
		if err != nil {
			return fmt.Errorf("reconcile %s blobs: %w", alg, err)
		}
		added += n
	}
	var missing []digest.Digest
	err := f.db.View(func(txn *badger.Txn) error {
		pfx := prefix(kindMeta)
		for _, s := range suffixes(txn, pfx) {
			d := digest.Digest(s)
			if CheckDigest(d) != nil {
				missing = append(missing, d)
				continue
			}
			fi, err := os.Stat(f.path(d))
			switch {
			case errors.Is(err, fs.ErrNotExist):
				missing = append(missing, d)
			case err != nil:
				return err
			default:
				f.bytes += fi.Size()
				f.count++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reconcile index: %w", err)
	}
	for _, d := range missing {
		if err := f.db.Update(func(txn *badger.Txn) error { return purge(txn, d) }); err != nil { // removing: also on a full disk
			return fmt.Errorf("reconcile index: %w", err)
		}
	}
	if added > 0 || len(missing) > 0 {
		f.log.Warn("store index reconciled with blob files", "indexed", added, "purged", len(missing))
	}
	return nil
}

// indexOrphans records metadata for files under blobs/<alg> that have none.
func (f *Files) indexOrphans(alg digest.Algorithm) (int, error) {
	root := filepath.Join(f.dir, "blobs", string(alg))
	subs, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	added := 0
	for _, sub := range subs {
		if !sub.IsDir() { // a .DS_Store, an editor's backup: not ours
			f.log.Warn("ignoring stray file in blob store", "file", filepath.Join(root, sub.Name()))
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, sub.Name()))
		if err != nil {
			return added, err
		}
		var orphans []digest.Digest
		err = f.db.View(func(txn *badger.Txn) error {
			for _, e := range entries {
				d := digest.NewDigestFromEncoded(alg, e.Name())
				if CheckDigest(d) != nil || e.Name()[:2] != sub.Name() || !e.Type().IsRegular() {
					f.log.Warn("ignoring stray file in blob store", "file", filepath.Join(root, sub.Name(), e.Name()))
					continue
				}
				if _, err := getMeta(txn, d); errors.Is(err, ErrNotFound) {
					orphans = append(orphans, d)
				} else if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return added, err
		}
		for _, d := range orphans {
			fi, err := os.Stat(f.path(d))
			if err != nil {
				return added, err
			}
			err = f.update(func(txn *badger.Txn) error {
				return putMeta(txn, d, Meta{Size: fi.Size(), Created: fi.ModTime(), Accessed: fi.ModTime()})
			})
			if err != nil {
				return added, err
			}
			added++
		}
	}
	return added, nil
}
