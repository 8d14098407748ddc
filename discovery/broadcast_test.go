package discovery

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// inbox records what a member's Channel received.
type inbox struct {
	mu       sync.Mutex
	messages [][]byte
	states   [][]byte
	state    []byte // what this member's State returns
}

func (in *inbox) channel() Channel {
	return Channel{
		OnMessage: func(b []byte) {
			in.mu.Lock()
			in.messages = append(in.messages, b)
			in.mu.Unlock()
		},
		State: func() []byte {
			in.mu.Lock()
			defer in.mu.Unlock()
			return in.state
		},
		OnState: func(b []byte) {
			in.mu.Lock()
			in.states = append(in.states, b)
			in.mu.Unlock()
		},
	}
}

func (in *inbox) setState(b []byte) {
	in.mu.Lock()
	in.state = b
	in.mu.Unlock()
}

func (in *inbox) hasMessage(want []byte) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if slices.ContainsFunc(in.messages, func(b []byte) bool { return bytes.Equal(b, want) }) {
		return nil
	}
	return fmt.Errorf("message of %d bytes not received (got %d messages)", len(want), len(in.messages))
}

func (in *inbox) hasState(want []byte) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if slices.ContainsFunc(in.states, func(b []byte) bool { return bytes.Equal(b, want) }) {
		return nil
	}
	return fmt.Errorf("state %q not received (got %d states)", want, len(in.states))
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBroadcastReachesEveryMember(t *testing.T) {
	t.Parallel()
	// The sender alone sends a gossiped message 8 times (retransmitMult ×
	// ceil(log10(fleet size + 1))) to random members, sometimes the same
	// one: 8 members are all reached because receivers pass it on.
	tests := []struct {
		name    string
		key     []byte
		size    int
		members int
	}{
		{name: "gossip", size: 200, members: 8},
		{name: "gossip at the limit, encrypted", key: randomBytes(t, 32), size: MaxGossipMessage, members: 4},
		{name: "too large for gossip: TCP", size: 16 << 10, members: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			boxes := make([]inbox, tt.members)
			seed := start(t, Options{Name: "m0", Key: tt.key, Channel: boxes[0].channel()})
			fleet := []*Fleet{seed}
			for i := 1; i < len(boxes); i++ {
				fleet = append(fleet, start(t, Options{Name: fmt.Sprintf("m%d", i), Key: tt.key,
					Join: []string{seed.Addr()}, Channel: boxes[i].channel()}))
			}
			for _, f := range fleet {
				eventually(t, 20*time.Second, func() error { return seesAlive(f, fleet...) })
			}
			msg := randomBytes(t, tt.size)
			if err := fleet[2].Broadcast(msg); err != nil {
				t.Fatal(err)
			}
			for i := range boxes {
				if i == 2 {
					continue
				}
				eventually(t, 15*time.Second, func() error { return boxes[i].hasMessage(msg) })
			}
			if err := boxes[2].hasMessage(msg); err == nil {
				t.Error("the sender received its own broadcast")
			}
		})
	}
}

func TestStateReachesMembersThatWereAway(t *testing.T) {
	t.Parallel()
	var a, b, late inbox
	a.setState([]byte("state of a"))
	fa := start(t, Options{Name: "a", Channel: a.channel()})
	fb := start(t, Options{Name: "b", Join: []string{fa.Addr()}, Channel: b.channel()})
	eventually(t, 20*time.Second, func() error { return seesAlive(fb, fa, fb) })

	// A member that joins after the news gets it by push/pull when it joins.
	start(t, Options{Name: "late", Join: []string{fa.Addr()}, Channel: late.channel()})
	eventually(t, 15*time.Second, func() error { return late.hasState([]byte("state of a")) })

	// State changes reach members on the periodic push/pull (1s in tests).
	late.setState([]byte("state of late, v2"))
	eventually(t, 20*time.Second, func() error {
		return errors.Join(a.hasState([]byte("state of late, v2")), b.hasState([]byte("state of late, v2")))
	})
}

func TestBroadcastAfterClose(t *testing.T) {
	t.Parallel()
	f := start(t, Options{Name: "solo"})
	if err := f.Broadcast(nil); !errors.Is(err, ErrEmptyMessage) {
		t.Fatalf("empty message: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Broadcast([]byte("x")); !errors.Is(err, errClosed) {
		t.Fatalf("after Close: %v, want errClosed", err)
	}
}

func TestBroadcastNamedKeepsTheLatest(t *testing.T) {
	t.Parallel()
	var in inbox
	a := start(t, Options{Name: "a"})
	// Alone, a gossips to nobody: its queue holds what it was given.
	for i := range 5 {
		if err := a.BroadcastNamed("progress", fmt.Appendf(nil, "progress %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Broadcast([]byte("order")); err != nil {
		t.Fatal(err)
	}
	if n := a.del.bc.queue.NumQueued(); n != 2 {
		t.Fatalf("%d messages queued, want 2 (the latest progress and the order)", n)
	}
	start(t, Options{Name: "b", Join: []string{a.Addr()}, Channel: in.channel()})
	eventually(t, 15*time.Second, func() error {
		return errors.Join(in.hasMessage([]byte("progress 4")), in.hasMessage([]byte("order")))
	})
	if in.hasMessage([]byte("progress 3")) == nil {
		t.Fatal("a replaced progress message was delivered")
	}
}

func TestSendToReachesTheNamedMember(t *testing.T) {
	t.Parallel()
	var a, b inbox
	fa := start(t, Options{Name: "a", Channel: a.channel()})
	fb := start(t, Options{Name: "b", Join: []string{fa.Addr()}, Channel: b.channel()})
	eventually(t, 20*time.Second, func() error { return seesAlive(fb, fa, fb) })
	eventually(t, 20*time.Second, func() error { return seesAlive(fa, fa, fb) })

	msg := []byte("final report")
	if err := fa.SendTo("b", msg); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error { return b.hasMessage(msg) })
	if err := fa.SendTo("nobody", msg); !errors.Is(err, ErrNoMember) {
		t.Errorf("SendTo an unknown member: %v, want ErrNoMember", err)
	}
	if err := fa.SendTo("a", msg); !errors.Is(err, ErrNoMember) {
		t.Errorf("SendTo itself: %v, want ErrNoMember", err)
	}
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fa.SendTo("b", msg); !errors.Is(err, errClosed) {
		t.Errorf("SendTo after Close: %v, want errClosed", err)
	}
}

// TestCloseWhileACallbackBroadcasts: Close waits for a Channel callback to
// return, and the callback may broadcast (prefetch answers a push/pull that
// echoes its own report). Close once held the fleet's lock while it waited,
// and the callback waited for that lock: a node hung on SIGTERM.
func TestCloseWhileACallbackBroadcasts(t *testing.T) {
	t.Parallel()
	var f *Fleet
	inCallback := make(chan struct{})
	var once sync.Once
	ch := Channel{
		State: func() []byte { return []byte("state") },
		OnState: func([]byte) {
			once.Do(func() { close(inCallback) })
			// Broadcast only once Close has started (holds or wants the
			// lock): the interleaving that hung.
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				if !f.mu.TryRLock() {
					break
				}
				closed := f.closed
				f.mu.RUnlock()
				if closed {
					break
				}
			}
			_ = f.BroadcastNamed("report/x", []byte("my report again"))
		},
	}
	var err error
	if f, err = New(Options{Name: "a", BindAddr: "127.0.0.1:0", Timing: fast(), Channel: ch, Logger: testLogger(t)}); err != nil {
		t.Fatal(err)
	}
	f.del.MergeRemoteState([]byte("a member's state"), false) // as a push/pull delivers it
	<-inCallback
	done := make(chan error, 1)
	go func() { done <- f.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return: it waits for a callback that waits for Close's lock")
	}
}
