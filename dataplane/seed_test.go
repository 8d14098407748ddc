package dataplane

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
	a := NewClient(ClientOptions{NodeID: "12D3KooWMemberA"})
	b := NewClient(ClientOptions{NodeID: "12D3KooWMemberB"})
	t.Cleanup(a.CloseIdleConnections)
	t.Cleanup(b.CloseIdleConnections)

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
		p.end(ref, now)
		now = now.Add(PieceSentHold / maxPieceSends)
	}
	if n := len(p.m); n > maxPieceSends+1 {
		t.Fatalf("%d pieces remembered, want at most %d", n, maxPieceSends+1)
	}
	// A transfer under way is never forgotten, however old.
	busy := pieceRef{i: -1}
	p.begin(busy, "a", now)
	for i := range 2 * maxPieceSends {
		ref := pieceRef{i: 1e6 + i}
		p.begin(ref, "a", now)
		p.end(ref, now)
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
	p.end(ref, later.Add(time.Second)) // slow done
	p.end(ref, later.Add(2*time.Second))
	if p.begin(ref, "c", later.Add(2*time.Second+PieceSentHold-time.Millisecond)) {
		t.Fatal("c got the piece within the hold after b's transfer ended")
	}
	if !p.begin(ref, "c", later.Add(2*time.Second+PieceSentHold)) {
		t.Fatal("c refused the piece after the hold")
	}
}

func TestListenLimitsUnsentBytes(t *testing.T) {
	t.Parallel()
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var got int
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		got, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	}); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if got != unsentLowWater {
		t.Fatalf("TCP_NOTSENT_LOWAT = %d, want %d", got, unsentLowWater)
	}
}
