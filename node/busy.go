package node

import (
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Busy reports whether blob d is in use: being downloaded, or read by a
// client through a download (whose reader reopens the committed blob from
// the store). Eviction spares it. A local hit is handed out as an open
// *os.File (sendfile), which a deletion cannot cut short, and is not
// counted.
func (n *Node) Busy(d digest.Digest) bool {
	return n.inflight(d) != nil || n.readers.count(d) > 0
}

// readers counts open readers of blobs, by digest.
type readers struct {
	mu sync.Mutex
	n  map[digest.Digest]int
}

func (r *readers) add(d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[digest.Digest]int{}
	}
	r.n[d]++
}

func (r *readers) done(d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n[d]--; r.n[d] <= 0 {
		delete(r.n, d)
	}
}

func (r *readers) count(d digest.Digest) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[d]
}

// track counts rc as a reader of d until it is closed (once).
func (n *Node) track(d digest.Digest, rc io.ReadSeekCloser) io.ReadSeekCloser {
	n.readers.add(d)
	return &trackedReader{ReadSeekCloser: rc, release: sync.OnceFunc(func() { n.readers.done(d) })}
}

type trackedReader struct {
	io.ReadSeekCloser
	release func()
}

func (t *trackedReader) Close() error {
	defer t.release()
	return t.ReadSeekCloser.Close()
}
