package dataplane

import (
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/internal/httpx"
	"github.com/imgmesh/imgmesh/internal/piece"
)

// A seed is a node whose uplink brings a blob into the fleet: it holds the
// blob complete, or it fetches it from upstream. Every piece it sends twice
// is a piece it sends later: in a rollout from one seed, a per-piece
// timeline of 10 nodes showed 266 pieces sent by the seed for 193 distinct
// ones, its peers picking the same "rarest" piece from stale piece maps. So
// a seed sends a piece to one member at a time (BitTorrent's super-seeding
// has the same aim): a second member asking for it while it is on its way
// (for PieceSentHold at most), or within PieceSentHold after, is told so and
// takes it from the first one (or another piece from the seed). After the
// hold anyone gets it again: a member that received it and vanished, or
// receives it slowly, costs that much. A body that broke off reached nobody
// and holds nothing.

// PieceSentHold is how long after a seed sent a piece it refuses it to
// other members: time for the piece to reach its receiver and for the
// receiver's piece map to reach the others, on a loaded LAN. In the rollout
// above a 1 s hold left 53 second sends, 3 s left 32, most of them asked
// 1-3 s after the first send.
const PieceSentHold = 3 * time.Second

// requesterHeader names the node a data-plane request comes from: a seed
// sends each piece to one requester at a time. With a fleet key the seed
// takes the ID the request is signed for instead (any member could sign
// for any ID: it is used for scheduling only).
const requesterHeader = "Imgmesh-Node"

// pieceSentHeader marks a 503 that refuses a piece a seed just sent to
// another member; older clients take it as busy.
const pieceSentHeader = "Imgmesh-Piece-Sent"

type pieceRef struct {
	d digest.Digest
	i int
}

type pieceSend struct {
	to     string    // the member it went to last
	start  time.Time // when it started going to `to`
	active int       // transfers of the piece under way
	until  time.Time // end of the hold after the last one finished
}

// pieceSends remembers the pieces a seed sent lately.
type pieceSends struct {
	mu        sync.Mutex
	m         map[pieceRef]pieceSend
	pruneOver int // prune when the table grows past this
}

// maxPieceSends is the table size past which entries whose hold ended are
// dropped. If most are still held (a seed sending more than 4096 pieces in
// PieceSentHold, 11 Gbit/s), the next prune waits until the table doubles:
// the table stays within twice what is held, at O(1) amortized cost.
const maxPieceSends = 4096

// begin reports whether piece ref may go to requester to now, and counts
// the transfer. end must follow a true answer. It is refused when it went
// to another member less than PieceSentHold ago, or is still on its way to
// it and started less than PieceSentHold ago.
func (p *pieceSends) begin(ref pieceRef, to string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[pieceRef]pieceSend{}
	}
	rec, ok := p.m[ref]
	// A transfer under way holds the piece for PieceSentHold at most: a
	// member on a slow link must not hold it from the others for long.
	if ok && rec.to != to && ((rec.active > 0 && now.Sub(rec.start) < PieceSentHold) || now.Before(rec.until)) {
		return false
	}
	if rec.to != to || rec.active == 0 {
		rec.to, rec.start = to, now // a new transfer: the hold counts from now
	}
	rec.active++
	p.m[ref] = rec
	if len(p.m) > max(p.pruneOver, maxPieceSends) {
		for k, r := range p.m {
			if r.active == 0 && !now.Before(r.until) {
				delete(p.m, k)
			}
		}
		p.pruneOver = 2 * len(p.m)
	}
	return true
}

// end closes a transfer begun with begin. A piece sent whole is held for
// PieceSentHold; one whose body broke off reached nobody, so unless
// another transfer of it is under way, any member may have it at once.
func (p *pieceSends) end(ref pieceRef, now time.Time, sent bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rec, ok := p.m[ref]
	if !ok {
		return
	}
	rec.active = max(rec.active-1, 0)
	switch {
	case sent:
		rec.until = now.Add(PieceSentHold)
	case rec.active == 0:
		rec.until = time.Time{}
	}
	p.m[ref] = rec
}

// signedBy is the context key of the node ID a request's Authorization
// was signed for.
type signedBy struct{}

// requester names who sent r: the node ID it was signed for, else its
// requesterHeader, else its IP address.
func requester(r *http.Request) string {
	if id, _ := r.Context().Value(signedBy{}).(string); id != "" {
		return id
	}
	if id := r.Header.Get(requesterHeader); id != "" {
		return id
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// onePiece returns the piece a GET's Range asks for when it is exactly one
// piece of a blob of size bytes (how the swarm asks); ok false otherwise.
func onePiece(r *http.Request, size int64) (int, bool) {
	if r.Method != http.MethodGet {
		return 0, false
	}
	off, end, ok := parseRange(r.Header.Get("Range"))
	if !ok || off%piece.Size != 0 || off >= size {
		return 0, false
	}
	i := int(off / piece.Size)
	if _, pend := piece.Bounds(i, size); end != pend {
		return 0, false
	}
	return i, true
}

// sendOnce admits a seed's transfer of one piece. It returns the writer to
// send the body through and a func to call when the handler is done, or,
// having answered 503 with pieceSentHeader, a nil func. Requests that are
// not one piece pass unchanged, with a no-op.
func (s *server) sendOnce(w http.ResponseWriter, r *http.Request, d digest.Digest, size int64) (http.ResponseWriter, func()) {
	i, ok := onePiece(r, size)
	if !ok {
		return w, func() {}
	}
	ref := pieceRef{d, i}
	if !s.sent.begin(ref, requester(r), s.now()) {
		s.m.piecesRefused.Inc()
		w.Header().Set(pieceSentHeader, "1")
		w.Header().Set("Retry-After", strconv.Itoa(int(PieceSentHold/time.Second)))
		fail(w, http.StatusServiceUnavailable, "piece just sent to another member: get it from the fleet")
		return w, nil
	}
	off, end := piece.Bounds(i, size)
	rec := httpx.NewRecorder(w) // counts the body, and keeps its 4 MiB block copy
	return rec, func() { s.sent.end(ref, s.now(), rec.Written() == end-off) }
}
