package blobstore

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/opencontainers/go-digest"
)

// Pins, access times and manifest walks of the in-memory store.

// SetClock replaces the store's clock (access times), for tests. Call it
// before the store is used.
func (m *Memory) SetClock(now func() time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.now = now
}

// Pin keeps manifest d from eviction; ErrNotFound unless some repository
// indexes d as a manifest.
func (m *Memory) Pin(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; ok {
		for _, mans := range m.manifests {
			if _, ok := mans[d]; ok {
				m.pins[d] = true
				return nil
			}
		}
	}
	return fmt.Errorf("pin manifest %s: %w", d, ErrNotFound)
}

// Unpin removes d's pin, or ErrNotFound.
func (m *Memory) Unpin(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.pins[d] {
		return fmt.Errorf("pin %s: %w", d, ErrNotFound)
	}
	delete(m.pins, d)
	return nil
}

// Pins lists the pinned digests in digest order.
func (m *Memory) Pins(context.Context) ([]digest.Digest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]digest.Digest, 0, len(m.pins))
	for d := range m.pins {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Touch records that blob d was used now.
func (m *Memory) Touch(_ context.Context, d digest.Digest) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; ok {
		m.access[d] = m.now()
	}
}

// LastAccess reports when blob d was last committed or touched.
func (m *Memory) LastAccess(_ context.Context, d digest.Digest) (time.Time, error) {
	if err := CheckDigest(d); err != nil {
		return time.Time{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; !ok {
		return time.Time{}, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return m.access[d], nil
}

// WalkAccess calls fn for every blob with its last access.
func (m *Memory) WalkAccess(_ context.Context, fn func(Info, time.Time) error) error {
	type rec struct {
		info Info
		at   time.Time
	}
	m.mu.Lock()
	recs := make([]rec, 0, len(m.blobs))
	for d, b := range m.blobs {
		recs = append(recs, rec{Info{Digest: d, Size: int64(len(b))}, m.access[d]})
	}
	m.mu.Unlock()
	for _, r := range recs {
		if err := fn(r.info, r.at); err != nil {
			return err
		}
	}
	return nil
}

// WalkManifests calls fn for every manifest record of every repository.
func (m *Memory) WalkManifests(_ context.Context, fn func(repo string, man Manifest) error) error {
	type rec struct {
		repo string
		man  Manifest
	}
	m.mu.Lock()
	var recs []rec
	for repo, mans := range m.manifests {
		for _, man := range mans {
			recs = append(recs, rec{repo, man})
		}
	}
	m.mu.Unlock()
	for _, r := range recs {
		if err := fn(r.repo, r.man); err != nil {
			return err
		}
	}
	return nil
}
