package registryapi

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/imgmesh/imgmesh/blobstore"
)

// session is one blob upload in progress.
type session struct {
	id   string
	name string // repository name as requested
	key  string // store repository it links into

	mu   sync.Mutex // held by the request working on the session
	w    blobstore.Writer
	done bool // guarded by mu: committed, cancelled or expired

	refs int       // guarded by uploads.mu: requests holding or waiting for mu
	last time.Time // guarded by uploads.mu: end of the last request
}

// uploads is the in-memory table of upload sessions: bounded in number, idle
// sessions swept (writer cancelled, temp data removed) every sweep period
// while any is open, and whenever a new one starts. A client that gives up
// without DELETE leaves its session to the sweep.
type uploads struct {
	mu    sync.Mutex
	m     map[string]*session
	max   int
	idle  time.Duration
	every time.Duration // sweep period
	now   func() time.Time

	// A timer, not a goroutine, waits for the next sweep, and only while
	// sessions are open: a server without uploads holds nothing, even if
	// never closed.
	timer    *time.Timer    // guarded by mu: the next sweep, nil if none is due
	closed   bool           // guarded by mu: closeAll was called
	sweeping sync.WaitGroup // timer sweeps in progress; closeAll waits for them
}

func newUploads(max int, idle, every time.Duration, now func() time.Time) *uploads {
	return &uploads{m: map[string]*session{}, max: max, idle: idle, every: every, now: now}
}

// start sweeps idle sessions, then opens a writer for a new session of
// name (linking into key) unless the table is full.
func (u *uploads) start(ctx context.Context, store blobstore.Store, name, key string) (*session, error) {
	u.sweep()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.m) >= u.max {
		return nil, apiError(CodeTooManyRequests, "too many upload sessions in progress")
	}
	w, err := store.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	s := &session{id: uuid.NewString(), name: name, key: key, w: w, last: u.now()}
	u.m[s.id] = s
	u.scheduleLocked()
	return s, nil
}

// scheduleLocked arms the sweep timer unless one is due, no session is open
// or the table is closed. u.mu is held.
func (u *uploads) scheduleLocked() {
	if u.timer == nil && !u.closed && len(u.m) > 0 {
		u.timer = time.AfterFunc(u.every, u.tick)
	}
}

// tick is the sweep timer firing: sweep, and again later while sessions
// remain.
func (u *uploads) tick() {
	u.mu.Lock()
	u.timer = nil
	if u.closed {
		u.mu.Unlock()
		return
	}
	u.sweeping.Add(1)
	u.mu.Unlock()
	defer u.sweeping.Done()
	u.sweep()
	u.mu.Lock()
	u.scheduleLocked()
	u.mu.Unlock()
}

// sweep cancels sessions that nobody uses and that were idle too long.
func (u *uploads) sweep() {
	u.mu.Lock()
	now := u.now()
	var expired []*session
	for id, s := range u.m {
		if s.refs == 0 && now.Sub(s.last) > u.idle {
			delete(u.m, id)
			expired = append(expired, s)
		}
	}
	u.mu.Unlock()
	for _, s := range expired {
		s.mu.Lock()
		s.done = true
		s.mu.Unlock()
		_ = s.w.Cancel()
	}
}

// acquire returns session id of name, locked for the caller; release it.
func (u *uploads) acquire(id, name string) (*session, *Error) {
	unknown := apiError(CodeBlobUploadUnknown, map[string]string{"upload": id})
	u.mu.Lock()
	s := u.m[id]
	if s == nil || s.name != name {
		u.mu.Unlock()
		return nil, unknown
	}
	s.refs++
	u.mu.Unlock()
	s.mu.Lock()
	if s.done {
		u.release(s)
		return nil, unknown
	}
	return s, nil
}

// release unlocks s and marks it used now.
func (u *uploads) release(s *session) {
	s.mu.Unlock()
	u.mu.Lock()
	s.refs--
	s.last = u.now()
	u.mu.Unlock()
}

// end removes s (locked by the caller) from the table; the caller commits
// or cancels its writer.
func (u *uploads) end(s *session) {
	s.done = true
	u.mu.Lock()
	delete(u.m, s.id)
	u.mu.Unlock()
}

// fail ends s and discards what it received.
func (u *uploads) fail(s *session) {
	u.end(s)
	_ = s.w.Cancel()
}

// closeAll stops the sweeps and cancels every session, waiting for
// requests working on them and for a sweep in progress.
func (u *uploads) closeAll() {
	u.mu.Lock()
	u.closed = true
	if u.timer != nil {
		u.timer.Stop()
		u.timer = nil
	}
	all := make([]*session, 0, len(u.m))
	for id, s := range u.m {
		delete(u.m, id)
		all = append(all, s)
	}
	u.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		if !s.done {
			s.done = true
			_ = s.w.Cancel()
		}
		s.mu.Unlock()
	}
	u.sweeping.Wait()
}

// count reports open sessions (tests, metrics).
func (u *uploads) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}
