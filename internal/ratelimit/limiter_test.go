package ratelimit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeClock makes a Limiter's waits instant and exact: sleeping moves the
// clock, nothing else does.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return ctx.Err()
}

func withFakeClock(l *Limiter) *fakeClock {
	c := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	l.now, l.sleep = c.Now, c.Sleep
	return c
}

func TestNewBurst(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		rate      int64
		wantBurst int
		wantNil   bool
	}{
		{name: "zero is unlimited", rate: 0, wantNil: true},
		{name: "negative is unlimited", rate: -5, wantNil: true},
		{name: "1/20 s of 8 MB/s", rate: 8_000_000, wantBurst: 400_000},
		{name: "1/20 s of 1 Gbit/s", rate: 125_000_000, wantBurst: 6_250_000},
		{name: "small rate gets MinBurst", rate: 10_000, wantBurst: MinBurst},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(tc.rate)
			if tc.wantNil {
				if l != nil {
					t.Fatalf("New(%d) = %+v, want nil (unlimited)", tc.rate, l)
				}
				return
			}
			if l.Burst() != tc.wantBurst || l.Rate() != tc.rate {
				t.Fatalf("New(%d): rate %d burst %d, want rate %d burst %d", tc.rate, l.Rate(), l.Burst(), tc.rate, tc.wantBurst)
			}
		})
	}
}

// TestNilUnlimited: a nil Limiter passes streams through untouched.
func TestNilUnlimited(t *testing.T) {
	t.Parallel()
	var l *Limiter
	ctx := context.Background()
	var buf bytes.Buffer
	if w := l.Writer(ctx, &buf); w != io.Writer(&buf) {
		t.Errorf("nil Writer wrapped the writer: %T", w)
	}
	r := bytes.NewReader([]byte("x"))
	if got := l.Reader(ctx, r); got != io.Reader(r) {
		t.Errorf("nil Reader wrapped the reader: %T", got)
	}
	if err := l.WaitN(ctx, 1<<40); err != nil || l.Waited() != 0 || l.Rate() != 0 || l.Burst() != 0 {
		t.Errorf("nil limiter: WaitN %v, Waited %s, Rate %d, Burst %d", err, l.Waited(), l.Rate(), l.Burst())
	}
}

// TestAccountedWait: copying 4 MB at 8 MB/s waits 0.45 s, exactly (the
// first 1/20 s of the rate, 400 kB, is in the full bucket), whether through
// a Reader or a Writer, and no wait is for more than the bucket.
func TestAccountedWait(t *testing.T) {
	t.Parallel()
	const size, rateBps = 4_000_000, 8_000_000
	want := time.Duration(float64(size-rateBps/burstWindow) / rateBps * float64(time.Second))
	data := make([]byte, size)
	for _, tc := range []struct {
		name string
		copy func(ctx context.Context, l *Limiter) (int64, error)
	}{
		{name: "reader", copy: func(ctx context.Context, l *Limiter) (int64, error) {
			return io.Copy(io.Discard, l.Reader(ctx, bytes.NewReader(data)))
		}},
		{name: "writer", copy: func(ctx context.Context, l *Limiter) (int64, error) {
			return io.Copy(l.Writer(ctx, io.Discard), bytes.NewReader(data))
		}},
		{name: "writer with one big write", copy: func(ctx context.Context, l *Limiter) (int64, error) {
			n, err := l.Writer(ctx, io.Discard).Write(data)
			return int64(n), err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := New(rateBps)
			clock := withFakeClock(l)
			start := clock.Now()
			n, err := tc.copy(context.Background(), l)
			if err != nil || n != size {
				t.Fatalf("copy: %d bytes, %v", n, err)
			}
			if got := l.Waited(); got < want-time.Millisecond || got > want+time.Millisecond {
				t.Errorf("accounted wait %s, want %s", got, want)
			}
			if got := clock.Now().Sub(start); got < want-time.Millisecond || got > want+time.Millisecond {
				t.Errorf("clock moved %s, want %s", got, want)
			}
		})
	}
}

// TestWallClock: the real clock agrees. The limiter can only make a copy
// slower, so the lower bound is exact; the upper bound leaves room for a
// loaded machine.
func TestWallClock(t *testing.T) {
	t.Parallel()
	const size, rateBps = 4_000_000, 8_000_000
	floor := time.Duration(float64(size-rateBps/burstWindow) / rateBps * float64(time.Second))
	src := make([]byte, size)
	if _, err := rand.Read(src); err != nil {
		t.Fatal(err)
	}
	l := New(rateBps)
	var got bytes.Buffer
	start := time.Now()
	if _, err := io.Copy(l.Writer(context.Background(), &got), bytes.NewReader(src)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("4 MB at 8 MB/s: %s (accounted wait %s)", took, l.Waited())
	if took < floor-time.Millisecond || took > 4*floor {
		t.Errorf("4 MB at 8 MB/s took %s, want %s to %s", took, floor, 4*floor)
	}
	if !bytes.Equal(got.Bytes(), src) {
		t.Errorf("the limited writer changed the bytes")
	}
}

// TestShared: four streams on one Limiter share its rate; together they take
// as long as one stream of their total size.
func TestShared(t *testing.T) {
	t.Parallel()
	const streams, each, rateBps = 4, 1_000_000, 8_000_000
	want := time.Duration(float64(streams*each-rateBps/burstWindow) / rateBps * float64(time.Second))
	l := New(rateBps)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for range streams {
		wg.Go(func() {
			if _, err := io.Copy(io.Discard, l.Reader(context.Background(), bytes.NewReader(make([]byte, each)))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if took := time.Since(start); took < want-time.Millisecond || took > 4*want {
		t.Errorf("4 × 1 MB on one 8 MB/s limiter took %s, want %s to %s", took, want, 4*want)
	}
}

// TestCancel: a cancelled context ends a wait at once, with the context's
// error, and the Writer reports only what it passed on.
func TestCancel(t *testing.T) {
	t.Parallel()
	l := New(1000) // bucket MinBurst: 32 KiB pass, the next chunk waits ~33 s
	// A deadline long enough for the first chunk to pass on a loaded
	// machine, far shorter than the next chunk's wait.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var buf bytes.Buffer
	start := time.Now()
	n, err := l.Writer(ctx, &buf).Write(make([]byte, 3*MinBurst))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Write: %d, %v; want context.DeadlineExceeded", n, err)
	}
	if n != MinBurst || buf.Len() != MinBurst {
		t.Errorf("Write returned %d with %d written, want %d", n, buf.Len(), MinBurst)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelled Write returned after %s", took)
	}
	r := l.Reader(ctx, bytes.NewReader(make([]byte, MinBurst)))
	if _, err := r.Read(make([]byte, MinBurst)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Read with a done context: %v, want context.DeadlineExceeded", err)
	}
}
