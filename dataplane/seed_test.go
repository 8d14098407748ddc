package dataplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/internal/piece"
)

// clock is a settable time for the server's piece holds.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestSeedSendsAPieceToOneMemberAtATime(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	blob := randomBytes(t, 2*piece.Size+1000) // three pieces, the last short
	d := f.put(t, blob)
	h := NewServer(ServerOptions{Store: f.store, Registerer: f.reg})
	clk := &clock{t: time.Unix(1e9, 0)}
	h.(*server).now = clk.now
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a, b := twoMembers(t, nil)

	get := func(c *Client, off, end int64) error {
		t.Helper()
		body, err := c.Range(t.Context(), srv.URL, d, off, end)
		if err != nil {
			return err
		}
		defer body.Close()
		got, err := io.ReadAll(body)
		if err != nil {
			t.Fatalf("range %d-%d: %v", off, end, err)
		}
		if string(got) != string(blob[off:end]) {
			t.Fatalf("range %d-%d: wrong bytes", off, end)
		}
		return nil
	}
	pieceRange := func(i int) (int64, int64) { return piece.Bounds(i, int64(len(blob))) }

	if err := get(a, 0, piece.Size); err != nil {
		t.Fatalf("first request for piece 0: %v", err)
	}
	err := get(b, 0, piece.Size)
	if !errors.Is(err, ErrPieceSent) || !errors.Is(err, ErrBusy) {
		t.Fatalf("another member asks for piece 0 just sent: %v, want ErrPieceSent (an ErrBusy)", err)
	}
	res := raw(t, "GET", srv.URL+BlobPath+d.String(), "Range", fmt.Sprintf("bytes=0-%d", piece.Size-1), requesterHeader, "12D3KooWMemberC")
	if res.status != http.StatusServiceUnavailable || res.header.Get(pieceSentHeader) == "" ||
		res.header.Get("Retry-After") != "3" || !strings.Contains(string(res.body), `"error":`) {
		t.Fatalf("raw refusal: status %d, headers %v, body %s; want 503 with %s, Retry-After 3 and a JSON error",
			res.status, res.header, res.body, pieceSentHeader)
	}
	if err := get(a, 0, piece.Size); err != nil {
		t.Fatalf("the member that got piece 0 asks again (a retry): %v", err)
	}
	off, end := pieceRange(2)
	if err := get(b, off, end); err != nil {
		t.Fatalf("another piece, the short last one: %v", err)
	}
	if err := get(a, off, end); !errors.Is(err, ErrPieceSent) {
		t.Fatalf("the last piece right after b got it: %v, want ErrPieceSent", err)
	}
	// Ranges that are not one piece (a resumed stream, a client's own
	// range) are not the swarm's: served as asked.
	if err := get(b, 10, 2000); err != nil {
		t.Fatalf("a range inside piece 0: %v", err)
	}
	if err := get(b, 0, int64(len(blob))); err != nil {
		t.Fatalf("the whole blob as one range: %v", err)
	}
	clk.add(PieceSentHold - time.Millisecond)
	if err := get(b, 0, piece.Size); !errors.Is(err, ErrPieceSent) {
		t.Fatalf("piece 0 just before the hold ends: %v, want ErrPieceSent", err)
	}
	clk.add(2 * time.Millisecond)
	if err := get(b, 0, piece.Size); err != nil {
		t.Fatalf("piece 0 after the hold: %v", err)
	}
	if got := counter(t, newMetricsFrom(t, f).piecesRefused); got != 4 {
		t.Errorf("pieces refused metric = %v, want 4", got)
	}
}

func TestPieceSendsStayBounded(t *testing.T) {
	t.Parallel()
	var p pieceSends
	now := time.Unix(1e9, 0)
	for i := range 3 * maxPieceSends {
		ref := pieceRef{i: i}
		if !p.begin(ref, "a", now) {
			t.Fatalf("piece %d refused to its first requester", i)
		}
		p.end(ref, now, true)
		now = now.Add(PieceSentHold / maxPieceSends)
	}
	// About maxPieceSends are held at any time; the table stays within
	// twice that.
	if n := len(p.m); n > 2*maxPieceSends+2 {
		t.Fatalf("%d pieces remembered, want at most %d", n, 2*maxPieceSends+2)
	}
	// A transfer under way is never forgotten, however old.
	busy := pieceRef{i: -1}
	p.begin(busy, "a", now)
	for i := range 2 * maxPieceSends {
		ref := pieceRef{i: 1e6 + i}
		p.begin(ref, "a", now)
		p.end(ref, now, true)
		now = now.Add(PieceSentHold)
	}
	if rec, ok := p.m[busy]; !ok || rec.active != 1 || rec.to != "a" {
		t.Fatalf("the transfer under way was dropped from the table: %+v", rec)
	}
}

// A member on a slow link holds a piece from the others for PieceSentHold
// at most, however long its own transfer takes.
func TestPieceSendToASlowMemberHoldsItOnlySoLong(t *testing.T) {
	t.Parallel()
	var p pieceSends
	t0 := time.Unix(1e9, 0)
	ref := pieceRef{i: 7}
	if !p.begin(ref, "slow", t0) {
		t.Fatal("first request refused")
	}
	if p.begin(ref, "b", t0.Add(PieceSentHold-time.Millisecond)) {
		t.Fatal("b got the piece while it was on its way to slow, within the hold")
	}
	later := t0.Add(PieceSentHold + time.Millisecond)
	if !p.begin(ref, "b", later) {
		t.Fatal("b refused the piece while slow still received it after the hold")
	}
	if p.begin(ref, "c", later) {
		t.Fatal("c got the piece just given to b")
	}
	p.end(ref, later.Add(time.Second), true) // slow done
	p.end(ref, later.Add(2*time.Second), true)
	if p.begin(ref, "c", later.Add(2*time.Second+PieceSentHold-time.Millisecond)) {
		t.Fatal("c got the piece within the hold after b's transfer ended")
	}
	if !p.begin(ref, "c", later.Add(2*time.Second+PieceSentHold)) {
		t.Fatal("c refused the piece after the hold")
	}
}

// TestPieceSendThatBrokeOffIsNotHeld: a body cut short reached nobody, so
// the piece is not held from the others, unless another transfer of it
// runs; a member asking again starts a new hold.
func TestPieceSendThatBrokeOffIsNotHeld(t *testing.T) {
	t.Parallel()
	var p pieceSends
	t0 := time.Unix(1e9, 0)
	ref := pieceRef{i: 1}
	if !p.begin(ref, "a", t0) {
		t.Fatal("first request refused")
	}
	p.end(ref, t0.Add(100*time.Millisecond), false) // a went away mid-body
	if !p.begin(ref, "b", t0.Add(110*time.Millisecond)) {
		t.Fatal("a piece that reached nobody is held from the next member")
	}
	p.end(ref, t0.Add(time.Second), true)

	// a asks twice (a retry); the first body breaks, the second goes on.
	ref = pieceRef{i: 2}
	p.begin(ref, "a", t0)
	p.begin(ref, "a", t0.Add(10*time.Millisecond))
	p.end(ref, t0.Add(20*time.Millisecond), false)
	if p.begin(ref, "b", t0.Add(30*time.Millisecond)) {
		t.Fatal("b admitted while a's second transfer of the piece runs")
	}

	// a gets the piece again a minute later: that transfer holds it anew.
	ref = pieceRef{i: 3}
	p.begin(ref, "a", t0)
	p.end(ref, t0.Add(time.Second), true)
	later := t0.Add(time.Minute)
	if !p.begin(ref, "a", later) {
		t.Fatal("a refused after the hold")
	}
	if p.begin(ref, "b", later.Add(10*time.Millisecond)) {
		t.Fatal("b admitted 10 ms into a's new transfer")
	}
}

// TestSeedFreesAPieceWhoseBodyBrokeOff: over HTTP, a member that drops a
// piece's body halfway does not keep the others from it.
func TestSeedFreesAPieceWhoseBodyBrokeOff(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	blob := randomBytes(t, 2*piece.Size)
	d := f.put(t, blob)
	h := NewServer(ServerOptions{Store: f.store, Throttle: func(ctx context.Context, w io.Writer) io.Writer {
		return slowWriter{ctx: ctx, w: w} // 64 KiB per 20 ms: a piece takes 0.3 s
	}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	a, b := twoMembers(t, nil)

	ctx, cancel := context.WithCancel(t.Context())
	body, err := a.Range(ctx, srv.URL, d, 0, piece.Size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(body, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	cancel() // a goes away mid-piece
	body.Close()
	// The server notices at its next write; b then gets the piece whole,
	// well before a hold would have ended.
	deadline := time.Now().Add(PieceSentHold / 2)
	for {
		body, err := b.Range(t.Context(), srv.URL, d, 0, piece.Size)
		if err == nil {
			got, rerr := io.ReadAll(body)
			body.Close()
			if rerr != nil || string(got) != string(blob[:piece.Size]) {
				t.Fatalf("b read %d bytes: %v", len(got), rerr)
			}
			return
		}
		if !errors.Is(err, ErrPieceSent) || time.Now().After(deadline) {
			t.Fatalf("b: %v; want the piece once a's body broke off", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// slowWriter writes at most 64 KiB per 20 ms.
type slowWriter struct {
	ctx context.Context
	w   io.Writer
}

func (s slowWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), 64<<10)
		select {
		case <-s.ctx.Done():
			return n, s.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		m, err := s.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// TestSeedTakesTheSignedRequester: with a fleet key, a seed knows a member
// by the node ID its request is signed for, not by the Imgmesh-Node header.
func TestSeedTakesTheSignedRequester(t *testing.T) {
	t.Parallel()
	key := dataPlaneKey(t)
	f := newFixture(t, key)
	d := f.put(t, randomBytes(t, piece.Size+10))
	a, _ := twoMembers(t, key)
	body, err := a.Range(t.Context(), f.srv.URL, d, 0, piece.Size)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, body)
	body.Close()
	// B signs as B but names itself A: still B, so refused.
	uri := BlobPath + d.String()
	res := raw(t, "GET", f.srv.URL+uri, "Range", fmt.Sprintf("bytes=0-%d", piece.Size-1),
		"Authorization", authorization(key, "12D3KooWMemberB", "GET", uri, time.Now()),
		requesterHeader, "12D3KooWMemberA")
	if res.status != http.StatusServiceUnavailable || res.header.Get(pieceSentHeader) == "" {
		t.Fatalf("B naming itself A: status %d (%d bytes); want 503 with %s", res.status, len(res.body), pieceSentHeader)
	}
	// A itself may ask again (a retry).
	if body, err = a.Range(t.Context(), f.srv.URL, d, 0, piece.Size); err != nil {
		t.Fatalf("A again: %v", err)
	}
	body.Close()
}

// TestSmallBodiesTakeNoUploadSlot: with every upload slot busy, a manifest
// or config sized blob is still served; a big one is refused as busy.
func TestSmallBodiesTakeNoUploadSlot(t *testing.T) {
	t.Parallel()
	f := newFixture(t, nil)
	big := f.put(t, randomBytes(t, 2*piece.Size))
	big2 := f.put(t, randomBytes(t, unsentLowWater+1))
	small := randomBytes(t, unsentLowWater)
	smallD := f.put(t, small)
	srv := httptest.NewServer(NewServer(ServerOptions{Store: f.store, UploadSlots: 1,
		Throttle: func(ctx context.Context, w io.Writer) io.Writer { return slowWriter{ctx: ctx, w: w} }}))
	t.Cleanup(srv.Close)
	c := NewClient(ClientOptions{})
	t.Cleanup(c.CloseIdleConnections)

	busy, _, err := c.Blob(t.Context(), srv.URL, big, 0) // holds the one slot for 0.6 s
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if _, err := io.ReadFull(busy, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	body, _, err := c.Blob(t.Context(), srv.URL, smallD, 0)
	if err != nil {
		t.Fatalf("small blob while the slot is busy: %v", err)
	}
	got, err := io.ReadAll(body)
	body.Close()
	if err != nil || !bytes.Equal(got, small) {
		t.Fatalf("small blob: %d bytes, %v", len(got), err)
	}
	if _, _, err := c.Blob(t.Context(), srv.URL, big2, 0); !errors.Is(err, ErrBusy) {
		t.Fatalf("a blob past the low-water mark while the slot is busy: %v, want ErrBusy", err)
	}
}

// twoMembers makes the clients of members A and B (with key, if any).
func twoMembers(t *testing.T, key []byte) (a, b *Client) {
	t.Helper()
	a = NewClient(ClientOptions{Key: key, NodeID: "12D3KooWMemberA"})
	b = NewClient(ClientOptions{Key: key, NodeID: "12D3KooWMemberB"})
	t.Cleanup(a.CloseIdleConnections)
	t.Cleanup(b.CloseIdleConnections)
	return a, b
}
