package node

import (
	"sync"
	"time"
)

// quietMembers remembers fleet members that did not answer a download's
// first poll within fetcherWait (stopped, frozen). The next misses do not
// wait for them, so a frozen fleet costs one wait, not one per miss. Any
// later answer from a member forgets it.
type quietMembers struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// quietFor is how long an unanswering member is not waited for.
const quietFor = 30 * time.Second

func (q *quietMembers) mark(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.until == nil {
		q.until = map[string]time.Time{}
	}
	now := time.Now()
	for k, t := range q.until { // the fleet is small: sweep as we go
		if now.After(t) {
			delete(q.until, k)
		}
	}
	q.until[id] = now.Add(quietFor)
}

func (q *quietMembers) heard(id string) {
	q.mu.Lock()
	delete(q.until, id)
	q.mu.Unlock()
}

func (q *quietMembers) has(id string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	t, ok := q.until[id]
	return ok && time.Now().Before(t)
}
