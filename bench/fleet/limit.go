package fleet

import (
	"context"
	"io"
	"sync"
	"time"
)

// Limiter is a token bucket shared by every stream that goes through it:
// at most Rate bytes per second on average, bursts of at most Burst bytes.
// It is a generic cell rate algorithm: each Wait pushes a theoretical
// arrival time forward by n/Rate and sleeps while that time runs more than
// Burst/Rate ahead of the clock.
type Limiter struct {
	rate  float64       // bytes per second
	burst time.Duration // Burst/Rate
	mu    sync.Mutex
	tat   time.Time // theoretical arrival time of the next byte
}

// NewLimiter limits to rate bytes/s with a burst of burst bytes.
func NewLimiter(rate float64, burst int) *Limiter {
	return &Limiter{rate: rate, burst: time.Duration(float64(burst) / rate * float64(time.Second))}
}

// Wait blocks until n more bytes may pass, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int) error {
	l.mu.Lock()
	now := time.Now()
	if l.tat.Before(now) {
		l.tat = now
	}
	l.tat = l.tat.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	wait := l.tat.Sub(now) - l.burst
	l.mu.Unlock()
	if wait <= 0 {
		return nil
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// chunk is the most bytes a limited write or read moves between waits.
const chunk = 32 << 10

// limitedReader reads through l, a chunk at most at a time.
type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *Limiter
}

func (lr limitedReader) Read(p []byte) (int, error) {
	if len(p) > chunk {
		p = p[:chunk]
	}
	n, err := lr.r.Read(p)
	if n > 0 {
		if werr := lr.l.Wait(lr.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}
