// Package ratelimit caps a node's transfer rate: Parse reads rates written
// for humans ("100Mbit", "10MiB/s"), and a Limiter is one token bucket shared
// by every stream that goes through it, so the cap holds for their sum.
package ratelimit

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// MinBurst is the smallest bucket of a Limiter: one io.Copy buffer (32 KiB),
// so a typical Read or Write waits once, whatever the rate.
const MinBurst = 32 << 10

// burstWindow is the bucket size in time: a Limiter lets through at most
// 1/20 s of its rate at once. Over any window of 100 ms or more the sum of
// its streams stays within about 50% of the cap, and the bucket is still far
// bigger than one read, so waits come in few, coarse steps.
const burstWindow = 20

// Limiter is a token bucket of bytes shared by many streams. A nil *Limiter
// is unlimited; its methods are safe to call on nil.
type Limiter struct {
	lim    *rate.Limiter
	burst  int
	waited atomic.Int64 // nanoseconds of delay handed out
	// mu orders reservations by time: rate.Limiter given an earlier time
	// than the last one moves its clock back and hands out tokens twice.
	mu sync.Mutex

	now   func() time.Time                                 // tests
	sleep func(ctx context.Context, d time.Duration) error // tests
}

// New returns a Limiter of bytesPerSec, or nil (unlimited) when it is 0 or
// less. The bucket holds max(bytesPerSec/20, MinBurst) bytes and starts full.
func New(bytesPerSec int64) *Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := bytesPerSec / burstWindow
	if burst < MinBurst {
		burst = MinBurst
	}
	if burst > 1<<30 {
		burst = 1 << 30 // keeps int conversion safe; 1 GiB at once is already no cap
	}
	return &Limiter{
		lim:   rate.NewLimiter(rate.Limit(bytesPerSec), int(burst)),
		burst: int(burst),
		now:   time.Now,
		sleep: sleepCtx,
	}
}

// Rate is the cap in bytes per second; 0 for a nil (unlimited) Limiter.
func (l *Limiter) Rate() int64 {
	if l == nil {
		return 0
	}
	return int64(l.lim.Limit())
}

// Burst is the bucket size in bytes: no single wait is for more.
func (l *Limiter) Burst() int {
	if l == nil {
		return 0
	}
	return l.burst
}

// Waited is the total delay the Limiter has imposed on its streams so far
// (summed over streams; concurrent waits add up).
func (l *Limiter) Waited() time.Duration {
	if l == nil {
		return 0
	}
	return time.Duration(l.waited.Load())
}

// WaitN blocks until n bytes may pass, in steps of at most Burst bytes, or
// until ctx ends.
func (l *Limiter) WaitN(ctx context.Context, n int) error {
	if l == nil {
		return nil
	}
	for n > 0 {
		step := min(n, l.burst)
		if err := l.wait(ctx, step); err != nil {
			return err
		}
		n -= step
	}
	return nil
}

// wait reserves n <= burst tokens and sleeps until they are due.
func (l *Limiter) wait(ctx context.Context, n int) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	now := l.now()
	r := l.lim.ReserveN(now, n)
	l.mu.Unlock()
	if !r.OK() {
		return fmt.Errorf("ratelimit: %d bytes exceed the burst of %d", n, l.burst)
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	if err := l.sleep(ctx, d); err != nil {
		l.mu.Lock()
		r.CancelAt(l.now()) // give back what was not used
		l.mu.Unlock()
		return err
	}
	l.waited.Add(int64(d))
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reader returns r limited by l: each Read reads at most Burst bytes, then
// waits for what it read. ctx ends the waiting (the Read returns its error).
// A nil l returns r itself.
func (l *Limiter) Reader(ctx context.Context, r io.Reader) io.Reader {
	if l == nil {
		return r
	}
	return &reader{ctx: ctx, l: l, r: r}
}

// Writer returns w limited by l: each Write waits before it passes on at
// most Burst bytes at a time. A nil l returns w itself.
func (l *Limiter) Writer(ctx context.Context, w io.Writer) io.Writer {
	if l == nil {
		return w
	}
	return &writer{ctx: ctx, l: l, w: w}
}

// reader and writer keep the ctx of the stream they wrap: an io.Reader has
// no other way to learn it.
type reader struct {
	ctx context.Context
	l   *Limiter
	r   io.Reader
}

func (r *reader) Read(p []byte) (int, error) {
	if len(p) > r.l.burst {
		p = p[:r.l.burst]
	}
	n, err := r.r.Read(p)
	if n > 0 {
		if werr := r.l.wait(r.ctx, n); werr != nil {
			return n, werr
		}
	}
	return n, err
}

type writer struct {
	ctx context.Context
	l   *Limiter
	w   io.Writer
}

func (w *writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), w.l.burst)]
		if err := w.l.wait(w.ctx, len(chunk)); err != nil {
			return written, err
		}
		n, err := w.w.Write(chunk)
		written += n
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
