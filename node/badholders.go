package node

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// badHolders remembers, for a while, which peers served bytes of a blob
// that did not verify, so the next fetch of that blob skips them and the
// fleet is not poisoned by one corrupt copy.
type badHolders struct {
	mu   sync.Mutex
	bad  map[digest.Digest]map[string]time.Time
	ttl  time.Duration
	now  func() time.Time
	size int // bound on remembered digests
}

func newBadHolders() *badHolders {
	return &badHolders{bad: map[digest.Digest]map[string]time.Time{}, ttl: 10 * time.Minute, now: time.Now, size: 1024}
}

func (b *badHolders) add(d digest.Digest, peers []string) {
	if len(peers) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.bad) >= b.size { // forget the expired, else everything
		for k, m := range b.bad {
			for p, until := range m {
				if b.now().After(until) {
					delete(m, p)
				}
			}
			if len(m) == 0 {
				delete(b.bad, k)
			}
		}
		if len(b.bad) >= b.size {
			clear(b.bad)
		}
	}
	m := b.bad[d]
	if m == nil {
		m = map[string]time.Time{}
		b.bad[d] = m
	}
	for _, p := range peers {
		m[p] = b.now().Add(b.ttl)
	}
}

func (b *badHolders) has(d digest.Digest, peer string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	until, ok := b.bad[d][peer]
	return ok && b.now().Before(until)
}
