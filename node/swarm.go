package node

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/internal/piece"
)

// swarm is the piece-level state of one download in a fleet: which verified
// pieces the node holds (and so serves to peers), the piece hashes it
// knows, and the pieces in flight. Pieces are written to the store writer in
// order; verified pieces that arrive ahead of the write frontier wait in
// memory, at most window pieces ahead, so the writer still hashes the whole
// blob in one pass and followers stream from the first byte.
type swarm struct {
	d      digest.Digest
	window int

	mu       sync.Mutex
	size     int64 // -1 until known
	count    int
	hashes   []piece.Hash
	known    piece.Set // pieces whose hash is known
	have     piece.Set // verified pieces held: written, or waiting in buf
	buf      map[int][]byte
	frontier int            // pieces [0, frontier) are in the writer
	inflight map[int]flight // pieces asked for and not arrived yet
	// origin: this node may fetch missing pieces from upstream (it ranked
	// first, was asked by the fleet, or took over).
	origin   bool
	fetchers int       // upstream fetchers running (a yielding one may overlap its restart)
	progress time.Time // when the last piece arrived
	changed  chan struct{}
	done     bool
}

func newSwarm(d digest.Digest, window int) *swarm {
	return &swarm{d: d, window: window, size: -1, buf: map[int][]byte{}, inflight: map[int]flight{},
		changed: make(chan struct{}), progress: time.Now()}
}

func (s *swarm) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// setSize fixes the blob's size; a different size later is a lie.
func (s *swarm) setSize(size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size >= 0 {
		if size != s.size {
			return fmt.Errorf("size %d, want %d", size, s.size)
		}
		return nil
	}
	if size < 0 {
		return fmt.Errorf("size %d", size)
	}
	s.size, s.count = size, piece.Count(size) // 0 bytes: no pieces, complete at once
	s.hashes = make([]piece.Hash, s.count)
	s.known, s.have = piece.NewSet(s.count), piece.NewSet(s.count)
	s.notifyLocked()
	return nil
}

// learn adopts hashes a source sent (from index from on). A hash that
// contradicts one already known condemns the source.
func (s *swarm) learn(from int, hashes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, text := range hashes {
		i := from + k
		if text == "" || i >= s.count {
			continue
		}
		h, err := piece.ParseHash(text)
		if err != nil {
			return err
		}
		if s.known.Has(i) {
			if s.hashes[i] != h {
				return fmt.Errorf("piece %d: hash %s, others said %s", i, h, s.hashes[i])
			}
			continue
		}
		s.hashes[i] = h
		s.known.Add(i)
	}
	return nil
}

// firstUnknown is the first piece whose hash is not known (count if all).
func (s *swarm) firstUnknown() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.count {
		if !s.known.Has(i) {
			return i
		}
	}
	return s.count
}

// dupAfter: in a full window, the piece at the write frontier is asked a
// second time when its request has been out this long (a slow source
// holds the window up).
const dupAfter = time.Second

// claim picks the next piece to ask a source for and counts it in flight:
// within the window, a piece the source has and we lack, whose hash we
// know; the rarest among the known sources first, at random among equals
// (peers trade different pieces). A piece already in flight is asked a
// second time, from another source, only in the endgame (every missing
// piece is in flight), or when it is the frontier of a full window and its
// request is slow. -1 if none.
func (s *swarm) claim(has piece.Set, pending func(int) bool, rarity func(int) int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	best, bestRare, ties := -1, 0, 0
	end := min(s.count, s.frontier+s.window)
	for i := s.frontier; i < end; i++ {
		if s.have.Has(i) || !s.known.Has(i) || !has.Has(i) || s.inflight[i].n > 0 {
			continue
		}
		// Among the rarest, pick at random: peers that start together then
		// ask their sources for different pieces and trade them, instead of
		// all asking the one holder for the same piece.
		switch r := rarity(i); {
		case best < 0 || r < bestRare:
			best, bestRare, ties = i, r, 1
		case r == bestRare:
			if ties++; rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	if best < 0 {
		best = s.duplicateLocked(has, pending, end)
	}
	if best >= 0 {
		s.askLocked(best)
	}
	return best
}

// duplicateLocked picks a piece in flight to ask a second source for: in the
// endgame the lowest one this source has; else the frontier piece, once a
// full window waits on it for dupAfter. -1 if none. Asking every piece
// twice whenever a source had nothing new made peers send a rollout's
// bytes about 1.6 times.
func (s *swarm) duplicateLocked(has piece.Set, pending func(int) bool, end int) int {
	ok := func(i int) bool {
		return !s.have.Has(i) && s.known.Has(i) && has.Has(i) && s.inflight[i].n == 1 && !pending(i)
	}
	endgame, full := true, true
	for i := s.frontier; i < s.count; i++ {
		if !s.have.Has(i) && s.inflight[i].n == 0 {
			endgame = false
			if i < end {
				full = false
			}
		}
	}
	switch {
	case endgame:
		for i := s.frontier; i < end; i++ {
			if ok(i) {
				return i
			}
		}
	case full && s.frontier < s.count && ok(s.frontier) && time.Since(s.inflight[s.frontier].since) > dupAfter:
		return s.frontier
	}
	return -1
}

// flight is a piece asked for: how many requests are out, and since when
// the first of them.
type flight struct {
	n     int
	since time.Time
}

func (s *swarm) askLocked(i int) {
	f := s.inflight[i]
	if f.n == 0 {
		f.since = time.Now()
	}
	f.n++
	s.inflight[i] = f
}

// arrivedLocked ends one request for piece i, with or without its bytes.
func (s *swarm) arrivedLocked(i int) {
	if f := s.inflight[i]; f.n > 1 {
		f.n--
		s.inflight[i] = f
		return
	}
	delete(s.inflight, i)
}

// claimUpstream picks the next piece to fetch from upstream: the first one
// in the window that nobody we know holds and nobody fetches. -1 if none.
func (s *swarm) claimUpstream(from int, heldElsewhere func(int) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	end := min(s.count, s.frontier+s.window)
	for i := max(from, s.frontier); i < end; i++ {
		if s.have.Has(i) || s.inflight[i].n > 0 || heldElsewhere(i) {
			continue
		}
		s.askLocked(i)
		return i
	}
	return -1
}

// release ends one request for piece i that brought nothing.
func (s *swarm) release(i int) {
	s.mu.Lock()
	s.arrivedLocked(i)
	s.notifyLocked()
	s.mu.Unlock()
}

var errBadPiece = errors.New("piece does not match its hash")

// deliver takes the bytes of piece i. Bytes from a peer must match the known
// hash; bytes from upstream define it. It reports whether the piece was new.
func (s *swarm) deliver(i int, data []byte, fromUpstream bool) (bool, error) {
	sum := piece.Sum(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.arrivedLocked(i)
	off, end := piece.Bounds(i, s.size)
	switch {
	case int64(len(data)) != end-off:
		s.notifyLocked()
		return false, fmt.Errorf("piece %d: %d bytes, want %d", i, len(data), end-off)
	case fromUpstream && !s.known.Has(i):
		s.hashes[i] = sum
		s.known.Add(i)
	case s.hashes[i] != sum:
		s.notifyLocked()
		return false, fmt.Errorf("piece %d: %w", i, errBadPiece)
	}
	if s.have.Has(i) {
		return false, nil
	}
	s.have.Add(i)
	s.buf[i] = data
	s.progress = time.Now()
	s.notifyLocked()
	return true, nil
}

// next returns the piece at the write frontier if it waits in memory.
func (s *swarm) next() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	data, ok := s.buf[s.frontier]
	return data, ok
}

// written moves the frontier past the piece just written.
func (s *swarm) written() {
	s.mu.Lock()
	delete(s.buf, s.frontier)
	s.frontier++
	s.notifyLocked()
	s.mu.Unlock()
}

// changes returns a channel closed at the next change of the state. Take it
// before looking at the state and wait on it after: a change in between
// then wakes the waiter instead of being missed.
func (s *swarm) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// waitChange blocks until ch closes, ctx ends or d passed.
func waitChange(ctx context.Context, ch <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	case <-ctx.Done():
	}
}

// complete reports whether every piece is written.
func (s *swarm) complete() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size >= 0 && s.frontier == s.count
}

// state is what this node tells a peer about the blob.
func (s *swarm) state(from int) (piece.State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size < 0 || s.done {
		return piece.State{}, false
	}
	st := piece.State{Size: s.size, Have: s.have.Clone(), From: min(from, s.count), Fetching: s.fetchers > 0}
	if len(s.inflight) > 0 {
		st.Asked = piece.NewSet(s.count)
		for i := range s.inflight {
			st.Asked.Add(i)
		}
	}
	for i := st.From; i < s.count; i++ {
		h := ""
		if s.known.Has(i) {
			h = s.hashes[i].String()
		}
		st.Hashes = append(st.Hashes, h)
	}
	for len(st.Hashes) > 0 && st.Hashes[len(st.Hashes)-1] == "" {
		st.Hashes = st.Hashes[:len(st.Hashes)-1]
	}
	return st, true
}

// haveCount is the number of verified pieces held, and the change channel.
func (s *swarm) haveCount() (int, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.have.Len(), s.changed
}

// buffered copies bytes of piece i waiting in memory (inBuf); held tells
// whether the node has the piece at all (else it is in the writer).
func (s *swarm) buffered(p []byte, off int64) (int, bool, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size < 0 || off >= s.size {
		return 0, false, false
	}
	i := int(off / piece.Size)
	if !s.have.Has(i) {
		return 0, false, false
	}
	if data, ok := s.buf[i]; ok {
		return copy(p, data[off-int64(i)*piece.Size:]), true, true
	}
	return 0, false, i < s.frontier // written: read it from the writer
}

func (s *swarm) becomeOrigin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	was := s.origin
	s.origin = true
	s.notifyLocked()
	return !was
}

// setFetching counts an upstream fetcher in (on) or out.
func (s *swarm) setFetching(on bool) {
	s.mu.Lock()
	if on {
		s.fetchers++
	} else {
		s.fetchers--
	}
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *swarm) isOrigin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.origin
}

func (s *swarm) sinceProgress() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Since(s.progress)
}

func (s *swarm) finish() {
	s.mu.Lock()
	s.done = true
	s.buf = map[int][]byte{}
	s.notifyLocked()
	s.mu.Unlock()
}

func (s *swarm) knownSize() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.size
}

func (s *swarm) pieceCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// poke wakes everyone waiting on the swarm (a source's state changed).
func (s *swarm) poke() {
	s.mu.Lock()
	s.notifyLocked()
	s.mu.Unlock()
}

// allHashes returns every piece hash, or nil if some are unknown.
func (s *swarm) allHashes() []piece.Hash {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.size < 0 || s.known.Len() != s.count {
		return nil
	}
	return append([]piece.Hash(nil), s.hashes...)
}

func (s *swarm) finished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}
