package fleet

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
)

// progressEvery is how often a running scenario logs its progress.
const progressEvery = 10 * time.Second

// outcome is one device's pull.
type outcome struct {
	device   int
	elapsed  time.Duration // from the common start to the last verified byte
	bytes    int64         // received, verified or not
	err      error
	timedOut bool // cut by the scenario's deadline (err is set)
}

// pullAll starts a pull on every device in devices at the same instant,
// each from base(device), and waits for all, cutting them after deadline.
// throttle, when set, gives a device's read limiter. It fails only when
// ctx ends; each pull's own failure is in its outcome.
func (e *env) pullAll(ctx context.Context, sc Scenario, devices []int, base func(int) string, throttle func(int) *Limiter, deadline time.Duration) ([]outcome, error) {
	outs := make([]outcome, len(devices))
	progress := make([]atomic.Int64, len(devices))
	var finished atomic.Int32
	start := make(chan struct{})
	var t0 time.Time
	var pctx context.Context
	var wg sync.WaitGroup
	for k, dev := range devices {
		var lim *Limiter
		if throttle != nil {
			lim = throttle(dev)
		}
		c, url := e.nw.client(dev), base(dev)
		wg.Go(func() {
			<-start // t0 and pctx are set before start closes
			_, err := Pull(pctx, c, url, e.img.Repo, e.img.Tag, e.img.ManifestDigest, &progress[k], lim)
			outs[k] = outcome{device: dev, elapsed: time.Since(t0), bytes: progress[k].Load(), err: err,
				timedOut: err != nil && pctx.Err() != nil && ctx.Err() == nil}
			finished.Add(1)
		})
	}
	t0 = time.Now()
	pctx, cancel := context.WithDeadline(ctx, t0.Add(deadline))
	defer cancel()
	close(start)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return outs, ctx.Err()
		case <-tick.C:
			var got int64
			for i := range progress {
				got += progress[i].Load()
			}
			e.step("%s %3.0fs: %d/%d done, devices received %s, upstream served %s", sc, time.Since(t0).Seconds(),
				finished.Load(), len(devices), humanize.Bytes(uint64(got)), humanize.Bytes(uint64(e.up.Served())))
		}
	}
}
