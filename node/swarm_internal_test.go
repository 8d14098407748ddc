package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/internal/piece"
)

// newTestSwarm is a swarm of count pieces whose hashes are all known.
func newTestSwarm(t *testing.T, count, window int) *swarm {
	t.Helper()
	s := newSwarm("sha256:0000000000000000000000000000000000000000000000000000000000000000", window)
	if err := s.setSize(int64(count) * piece.Size); err != nil {
		t.Fatal(err)
	}
	hashes := make([]string, count)
	for i := range hashes {
		hashes[i] = piece.Sum([]byte{byte(i)}).String()
	}
	if err := s.learn(0, hashes); err != nil {
		t.Fatal(err)
	}
	return s
}

func setOf(count int, pieces ...int) piece.Set {
	s := piece.NewSet(count)
	for _, i := range pieces {
		s.Add(i)
	}
	return s
}

func TestClaimAsksNoPieceTwiceBeforeTheEndgame(t *testing.T) {
	none := func(int) bool { return false }
	flat := func(int) int { return 0 }
	s := newTestSwarm(t, 4, 32)
	// Another source took pieces 0 and 1.
	all := setOf(4, 0, 1, 2, 3)
	for range 2 {
		if i := s.claim(setOf(4, 0, 1), none, flat); i < 0 {
			t.Fatal("no piece for the first source")
		}
	}
	// This source has only those two: no duplicate while 2 and 3 wait.
	if i := s.claim(setOf(4, 0, 1), none, flat); i != -1 {
		t.Fatalf("claimed piece %d a second time while others were never asked", i)
	}
	// The other two go out: now every missing piece is in flight, the
	// endgame, and an in-flight piece may be asked again.
	for range 2 {
		if i := s.claim(all, none, flat); i < 2 {
			t.Fatalf("claimed %d, want 2 or 3", i)
		}
	}
	i := s.claim(setOf(4, 0, 1), none, flat)
	if i != 0 && i != 1 {
		t.Fatalf("endgame claim %d, want a duplicate of 0 or 1", i)
	}
	// No piece is asked a third time.
	s.claim(setOf(4, 0, 1), none, flat)
	if i := s.claim(setOf(4, 0, 1), none, flat); i != -1 {
		t.Fatalf("claimed piece %d a third time", i)
	}
}

func TestClaimDuplicatesASlowFrontierPieceOfAFullWindow(t *testing.T) {
	none := func(int) bool { return false }
	flat := func(int) int { return 0 }
	s := newTestSwarm(t, 8, 2) // pieces 2.. lie beyond the window
	all := setOf(8, 0, 1, 2, 3, 4, 5, 6, 7)
	s.claim(all, none, flat)
	s.claim(all, none, flat)
	if i := s.claim(all, none, flat); i != -1 {
		t.Fatalf("claimed %d at once in a full window", i)
	}
	s.mu.Lock()
	f := s.inflight[0]
	f.since = time.Now().Add(-2 * dupAfter) // the frontier piece is slow
	s.inflight[0] = f
	s.mu.Unlock()
	if i := s.claim(all, none, flat); i != 0 {
		t.Fatalf("claimed %d, want the slow frontier piece 0", i)
	}
}

func TestClaimPrefersPiecesNobodyHoldsOrReceives(t *testing.T) {
	none := func(int) bool { return false }
	s := newTestSwarm(t, 3, 32)
	// Piece 0 is held by another peer, piece 1 received by one, piece 2 by
	// nobody else: the rarity the swarm run computes.
	rarity := func(i int) int { return []int{2, 1, 0}[i] }
	all := setOf(3, 0, 1, 2)
	for _, want := range []int{2, 1, 0} {
		if i := s.claim(all, none, rarity); i != want {
			t.Fatalf("claimed %d, want %d", i, want)
		}
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

// TestCountOnOnlyARequestThatLeft: a request to fetch that timed out after
// it left counts as taken; one whose dial timed out never reached the
// member, and one refused is a refusal.
func TestCountOnOnlyARequestThatLeft(t *testing.T) {
	wrap := func(err error) error {
		return fmt.Errorf("fetch from 10.0.0.2: %w", &url.Error{Op: "Post", URL: "http://10.0.0.2/fetch", Err: err})
	}
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"answer late", wrap(context.DeadlineExceeded), true},
		{"read timeout", wrap(&net.OpError{Op: "read", Net: "tcp", Err: timeoutErr{}}), true},
		{"dial timeout", wrap(&net.OpError{Op: "dial", Net: "tcp", Err: timeoutErr{}}), false},
		{"refused", wrap(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), false},
		{"status 500", errors.New("fetch: status 500: peer failed"), false},
	} {
		if got := isTimeout(c.err) && !isDial(c.err); got != c.want {
			t.Errorf("%s: counted on %v, want %v", c.name, got, c.want)
		}
	}
}

// TestQuietOnlyAfterItsTime: a source asked a moment ago (one that rejoined
// after a failure) is not called quiet for not having answered yet.
func TestQuietOnlyAfterItsTime(t *testing.T) {
	if (&peerSrc{added: time.Now()}).hadTime() {
		t.Error("a source added now had its time")
	}
	if !(&peerSrc{added: time.Now().Add(-fetcherWait)}).hadTime() {
		t.Errorf("a source added %s ago had not its time", fetcherWait)
	}
}
