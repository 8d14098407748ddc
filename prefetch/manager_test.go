package prefetch

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.uber.org/goleak"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakePuller pulls images of 1000 bytes: fails while failures > 0, blocks
// while block is set (until ctx ends), and records what it pulled.
type fakePuller struct {
	mu       sync.Mutex
	failures int
	missing  bool // every pull: not found
	block    chan struct{}
	pulled   []string
}

func (p *fakePuller) PullImage(ctx context.Context, name node.Name, ref string, opts node.PullOptions) (digest.Digest, error) {
	p.mu.Lock()
	block, missing := p.block, p.missing
	fail := p.failures > 0
	if fail {
		p.failures--
	}
	p.mu.Unlock()
	if opts.Progress != nil {
		opts.Progress(node.Progress{State: node.PullBlobs, Done: 400, Total: 1000})
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	switch {
	case missing:
		return "", fmt.Errorf("manifest %s:%s: %w: %w", name.Repo, ref, node.ErrImageUnknown, blobstore.ErrNotFound)
	case fail:
		return "", fmt.Errorf("upstream hiccup: %w", node.ErrUpstream)
	}
	if opts.Progress != nil {
		opts.Progress(node.Progress{State: node.PullComplete, Done: 1000, Total: 1000})
	}
	p.mu.Lock()
	p.pulled = append(p.pulled, name.NS+"/"+name.Repo+":"+ref)
	p.mu.Unlock()
	return digest.FromString(name.Repo + ref), nil
}

func (p *fakePuller) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pulled)
}

type fakePinner struct {
	mu   sync.Mutex
	pins []digest.Digest
}

func (p *fakePinner) Pin(_ context.Context, d digest.Digest) error {
	p.mu.Lock()
	p.pins = append(p.pins, d)
	p.mu.Unlock()
	return nil
}

// memFleet connects managers: a broadcast reaches every other started
// member, as gossip would.
type memFleet struct {
	mu       sync.Mutex
	members  map[string]*fakeMember
	lossyFor string // its broadcast complete and failed reports reach nobody (gossip that missed)
}

type fakeMember struct {
	down   bool // suspect or dead to the fleet
	name   string
	labels map[string]string
	m      *Manager
	puller *fakePuller
	pinner *fakePinner
}

func newMemFleet() *memFleet { return &memFleet{members: map[string]*fakeMember{}} }

func (f *memFleet) list() []Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Member
	for _, fm := range f.members {
		out = append(out, Member{Name: fm.name, Labels: fm.labels, Alive: !fm.down})
	}
	return out
}

func (f *memFleet) broadcast(from string) func(string, []byte) error {
	return func(_ string, b []byte) error {
		f.mu.Lock()
		if from == f.lossyFor {
			var msg message
			if json.Unmarshal(b, &msg) == nil && msg.Report != nil && (msg.Report.State == Complete || msg.Report.State == Failed) {
				f.mu.Unlock()
				return nil
			}
		}
		var to []*Manager
		for name, fm := range f.members {
			if name != from && fm.m != nil { // a member without a manager hears nothing
				to = append(to, fm.m)
			}
		}
		f.mu.Unlock()
		for _, m := range to {
			m.OnMessage(b)
		}
		return nil
	}
}

// sendTo delivers to one started member, never lost.
func (f *memFleet) sendTo(member string, b []byte) error {
	f.mu.Lock()
	fm := f.members[member]
	f.mu.Unlock()
	if fm == nil || fm.m == nil {
		return fmt.Errorf("no member %q", member)
	}
	fm.m.OnMessage(b)
	return nil
}

func fastOptions(path string) Options {
	return Options{Path: path, RetryMin: 20 * time.Millisecond, RetryMax: 50 * time.Millisecond, ReportInterval: 20 * time.Millisecond}
}

// join starts a member; with a path its state survives a restart.
func (f *memFleet) join(t *testing.T, name string, labels map[string]string, path string, p *fakePuller) *fakeMember {
	t.Helper()
	m, err := New(fastOptions(path))
	if err != nil {
		t.Fatal(err)
	}
	fm := &fakeMember{name: name, labels: labels, m: m, puller: p, pinner: &fakePinner{}}
	f.mu.Lock()
	f.members[name] = fm
	f.mu.Unlock()
	if err := m.Start(Runtime{Self: name, Labels: labels, Puller: p, Pinner: fm.pinner,
		Broadcast: f.broadcast(name), SendTo: f.sendTo, Members: f.list, DefaultRegistry: "docker.io"}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.leave(t, name) })
	return fm
}

func (f *memFleet) leave(t *testing.T, name string) {
	t.Helper()
	f.mu.Lock()
	fm := f.members[name]
	delete(f.members, name)
	f.mu.Unlock()
	if fm != nil {
		if err := fm.m.Close(); err != nil {
			t.Error(err)
		}
	}
}

// waitStates polls m's view of order id until every member listed has the
// state wanted.
func waitStates(t *testing.T, m *Manager, id string, want map[string]State) Status {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := m.Status(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]State{}
		for _, ms := range st.Members {
			if ms.Report != nil {
				got[ms.Name] = ms.Report.State
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("order %s: states %v, want %v", id, got, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOrderSpreadsAndSelectedMembersPull(t *testing.T) {
	f := newMemFleet()
	line3 := map[string]string{"line": "3"}
	a := f.join(t, "a", line3, "", &fakePuller{})
	b := f.join(t, "b", line3, "", &fakePuller{})
	c := f.join(t, "c", map[string]string{"line": "4"}, "", &fakePuller{})

	o, err := c.m.Create(context.Background(), Request{Refs: []string{"nginx:1.27", "plant.local/app:v2"}, Selector: line3})
	if err != nil {
		t.Fatal(err)
	}
	st := waitStates(t, c.m, o.ID, map[string]State{"a": Complete, "b": Complete})
	if len(st.Members) != 2 {
		t.Fatalf("selected %+v, want a and b", st.Members)
	}
	for _, ms := range st.Members {
		r := ms.Report
		if r.Done != 2000 || r.Total != 2000 || len(r.Digests) != 2 || r.Attempts != 1 {
			t.Errorf("%s report %+v, want 2000 of 2000 bytes, 2 digests, one attempt", ms.Name, r)
		}
	}
	for _, fm := range []*fakeMember{a, b} {
		want := []string{"/library/nginx:1.27", "plant.local/app:v2"}
		if !slices.Equal(fm.puller.pulled, want) {
			t.Errorf("%s pulled %v, want %v", fm.name, fm.puller.pulled, want)
		}
		if len(fm.pinner.pins) != 2 {
			t.Errorf("%s pinned %v, want both images", fm.name, fm.pinner.pins)
		}
	}
	if c.puller.count() != 0 {
		t.Errorf("c (line 4) pulled %v", c.puller.pulled)
	}

	// A member that joins later gets the order from anyone's state (push/pull).
	d := f.join(t, "d", line3, "", &fakePuller{})
	d.m.OnState(a.m.State())
	waitStates(t, b.m, o.ID, map[string]State{"a": Complete, "b": Complete, "d": Complete})
}

func TestFailedPullIsRetriedUntilItWorks(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, "", &fakePuller{failures: 2})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	st := waitStates(t, a.m, o.ID, map[string]State{"a": Complete})
	if r := st.Members[0].Report; r.Attempts != 3 || r.Error != "" {
		t.Fatalf("report %+v, want complete on the third attempt", r)
	}
}

func TestMissingImageFailsWithTheReason(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, "", &fakePuller{missing: true})
	b := f.join(t, "b", nil, "", &fakePuller{missing: true})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"nothing:here"}, Timeout: "1s"})
	if err != nil {
		t.Fatal(err)
	}
	st := waitStates(t, b.m, o.ID, map[string]State{"a": Failed, "b": Failed})
	for _, ms := range st.Members {
		if !strings.Contains(ms.Report.Error, "not found") || !strings.Contains(ms.Report.Error, "nothing:here") {
			t.Errorf("%s error %q, want the reference and not found", ms.Name, ms.Report.Error)
		}
		if !ms.Report.Lasting || !ms.Report.Final() {
			t.Errorf("%s report %+v: want lasting, and final though it is retried", ms.Name, ms.Report)
		}
	}
	// Retried until the deadline; then final (no retry time).
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := a.m.Status(context.Background(), o.ID)
		final := true
		for _, ms := range st.Members {
			final = final && ms.Report.State == Failed && ms.Report.RetryAt.IsZero()
		}
		if final {
			if st.Members[0].Report.Attempts < 2 {
				t.Errorf("a tried %d times within the timeout, want retries", st.Members[0].Report.Attempts)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still retrying after the deadline: %+v", st.Members)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRestartMidOrderResumes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prefetch.json")
	f := newMemFleet()
	blocked := &fakePuller{block: make(chan struct{})}
	a := f.join(t, "a", nil, path, blocked)
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, a.m, o.ID, map[string]State{"a": Pulling})
	f.leave(t, "a") // the node stops mid-pull

	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), `"pulling"`) {
		t.Fatalf("state file after stopping mid-pull: %v\n%s", err, b)
	}
	again := &fakePuller{}
	a = f.join(t, "a", nil, path, again)
	st := waitStates(t, a.m, o.ID, map[string]State{"a": Complete})
	if again.count() != 1 || st.Members[0].Report.Attempts != 2 {
		t.Fatalf("after restart: %d pulls, report %+v; want the order resumed", again.count(), st.Members[0].Report)
	}
}

func TestClaimAboutAMemberIsCorrectedByIt(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, "", &fakePuller{})
	b := f.join(t, "b", nil, "", &fakePuller{})
	o, err := b.m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, b.m, o.ID, map[string]State{"a": Complete, "b": Complete})

	// A stale claim about a, with a version from the future (a clock ahead,
	// or a's state before it lost its disk), reaches b, then a.
	forged := mustJSON(t, message{Report: &Report{Order: o.ID, Member: "a", State: Failed, Error: "forged",
		Version: time.Now().Add(time.Hour).UnixNano()}})
	b.m.OnMessage(forged)
	waitStates(t, b.m, o.ID, map[string]State{"a": Failed, "b": Complete})
	a.m.OnMessage(forged)
	// a answers with its own report, newer than the claim.
	waitStates(t, b.m, o.ID, map[string]State{"a": Complete, "b": Complete})
	if n := a.puller.count(); n != 1 {
		t.Fatalf("a pulled %d times, want once", n)
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMemberThatFailedAndDroppedOutStaysInTheStatus: a device that failed
// and then went suspect is still listed, failed and unreachable, so the
// order does not look complete without it.
func TestMemberThatFailedAndDroppedOutStaysInTheStatus(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, "", &fakePuller{})
	f.join(t, "b", nil, "", &fakePuller{missing: true})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}, Timeout: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, a.m, o.ID, map[string]State{"a": Complete, "b": Failed})
	f.mu.Lock()
	f.members["b"].down = true
	f.mu.Unlock()
	st, err := a.m.Status(context.Background(), o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 2 || st.Members[1].Name != "b" || !st.Members[1].Unreachable ||
		st.Members[1].Report == nil || st.Members[1].Report.State != Failed {
		t.Fatalf("status after b dropped out: %+v; want a, and b failed and unreachable", st.Members)
	}
}

// TestFinalReportReachesTheOriginWhenGossipMissesIt: b's final reports are
// lost to gossip; the member that accepted the order (which `imgmesh
// prefetch` watches) still learns them at once, the others do not.
func TestFinalReportReachesTheOriginWhenGossipMissesIt(t *testing.T) {
	f := newMemFleet()
	f.lossyFor = "b"
	a := f.join(t, "a", nil, "", &fakePuller{})
	f.join(t, "b", nil, "", &fakePuller{})
	c := f.join(t, "c", nil, "", &fakePuller{})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, a.m, o.ID, map[string]State{"a": Complete, "b": Complete, "c": Complete})
	st, err := c.m.Status(context.Background(), o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(st.Members, func(m MemberStatus) bool { return m.Name == "b" }); i >= 0 && st.Members[i].Report != nil && st.Members[i].Report.State == Complete {
		t.Errorf("c heard b's final report, which gossip lost: the fake fleet is not lossy")
	}
}

// TestRetriedFailureReachesTheOrigin: b fails and will retry, and gossip
// loses its reports: the member that accepted the order still learns that
// b failed and when it retries.
func TestRetriedFailureReachesTheOrigin(t *testing.T) {
	f := newMemFleet()
	f.lossyFor = "b"
	a := f.join(t, "a", nil, "", &fakePuller{})
	f.join(t, "b", nil, "", &fakePuller{failures: 1 << 20})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}, Timeout: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	st := waitStates(t, a.m, o.ID, map[string]State{"a": Complete, "b": Failed})
	for _, ms := range st.Members {
		if ms.Name == "b" && (ms.Report.RetryAt.IsZero() || ms.Report.Final()) {
			t.Errorf("a's view of b: %+v, want failed with a retry due", ms.Report)
		}
	}
}

// TestMemberThatDroppedOutBeforeReportingStaysInTheStatus: a device alive
// when the order was accepted that drops out before any report of it
// arrives is listed without a report, unreachable, so the order is not
// shown complete; also once the fleet has forgotten it.
func TestMemberThatDroppedOutBeforeReportingStaysInTheStatus(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, "", &fakePuller{})
	f.mu.Lock()
	f.members["ghost"] = &fakeMember{name: "ghost"} // alive, hears nothing
	f.mu.Unlock()
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}, Timeout: "1m"})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.Expected, []string{"a", "ghost"}) {
		t.Errorf("order expects %v, want [a ghost]", o.Expected)
	}
	waitStates(t, a.m, o.ID, map[string]State{"a": Complete})
	for _, step := range []string{"dead", "forgotten"} {
		f.mu.Lock()
		if step == "dead" {
			f.members["ghost"].down = true
		} else {
			delete(f.members, "ghost")
		}
		f.mu.Unlock()
		st, err := a.m.Status(context.Background(), o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Members) != 2 || st.Members[1].Name != "ghost" || !st.Members[1].Unreachable || st.Members[1].Report != nil {
			t.Errorf("status with ghost %s: %+v; want a, and ghost unreachable with no report", step, st.Members)
		}
	}
}

// TestOwnReportEchoedIsNotResent: a member's own report coming back in
// another member's state (every push/pull carries it) is not sent again,
// and after Close nothing is sent at all (the fleet is closing next).
func TestOwnReportEchoedIsNotResent(t *testing.T) {
	m, err := New(fastOptions(""))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sent []message
	if err := m.Start(Runtime{Self: "a", Puller: &fakePuller{}, Broadcast: func(_ string, b []byte) error {
		var msg message
		_ = json.Unmarshal(b, &msg)
		mu.Lock()
		sent = append(sent, msg)
		mu.Unlock()
		return nil
	}}); err != nil {
		t.Fatal(err)
	}
	o, err := m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	waitStates(t, m, o.ID, map[string]State{"a": Complete})
	time.Sleep(100 * time.Millisecond) // progress flushes (ReportInterval 20 ms) settle
	echo := m.State()
	mu.Lock()
	before := len(sent)
	mu.Unlock()
	m.OnState(echo)
	mu.Lock()
	if len(sent) != before {
		t.Errorf("own report echoed back was sent again: %+v", sent[before:])
	}
	mu.Unlock()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	forged := mustJSON(t, message{Report: &Report{Order: o.ID, Member: "a", State: Failed, Version: time.Now().Add(time.Hour).UnixNano()}})
	m.OnMessage(forged)
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != before {
		t.Errorf("sent after Close: %+v", sent[before:])
	}
}

// TestExpectedStaysWithTheOrigin: the list of expected members grows with
// the fleet; it stays in the origin's file and is not gossiped, so an
// order fits in a gossip packet whatever the fleet's size.
func TestExpectedStaysWithTheOrigin(t *testing.T) {
	f := newMemFleet()
	a := f.join(t, "a", nil, filepath.Join(t.TempDir(), "a.json"), &fakePuller{})
	b := f.join(t, "b", nil, "", &fakePuller{})
	o, err := a.m.Create(context.Background(), Request{Refs: []string{"app:v1"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Expected) != 2 {
		t.Fatalf("expected %v, want a and b", o.Expected)
	}
	waitStates(t, b.m, o.ID, map[string]State{"a": Complete, "b": Complete})
	st, err := b.m.Status(context.Background(), o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if st.Order.Expected != nil {
		t.Errorf("b got the order with expected members %v: it was gossiped", st.Order.Expected)
	}
	if s := string(a.m.State()); strings.Contains(s, `"expected"`) {
		t.Errorf("a's gossip state carries the expected members: %s", s)
	}
	if st, err := a.m.Status(context.Background(), o.ID); err != nil || len(st.Order.Expected) != 2 {
		t.Errorf("the origin's status: %+v, %v; want its expected members", st.Order, err)
	}
}
