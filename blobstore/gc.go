package blobstore

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// Quota bounds a store: when its usage passes High, eviction brings it down
// to Low. Max is the configured budget (reported, not enforced itself).
type Quota struct {
	Max, High, Low int64
}

// GCStats are the GC's counters since it started.
type GCStats struct {
	Runs         int64 // evictions run
	Blobs, Bytes int64 // evicted
}

// GC keeps a store under its Quota: it checks usage after every commit
// through a watched store (a mutex read), every interval, and evicts least
// recently used content (Evict) when usage is above High.
type GC struct {
	quota    Quota
	interval time.Duration
	log      *slog.Logger
	kick     chan struct{}

	runs, blobs, bytes atomic.Int64
}

// retryMin is the first retry after an eviction that stayed above High
// (pinned or busy content); retries back off to the interval.
const retryMin = 5 * time.Second

// NewGC returns a GC for q that checks every interval (default a minute).
// A nil logger discards.
func NewGC(q Quota, interval time.Duration, logger *slog.Logger) *GC {
	if interval <= 0 {
		interval = time.Minute
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &GC{quota: q, interval: interval, log: logger, kick: make(chan struct{}, 1)}
}

// Quota returns the GC's quota.
func (g *GC) Quota() Quota { return g.quota }

// Stats returns the counters.
func (g *GC) Stats() GCStats {
	return GCStats{Runs: g.runs.Load(), Blobs: g.blobs.Load(), Bytes: g.bytes.Load()}
}

// Kick asks for a usage check soon; it never blocks.
func (g *GC) Kick() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Watch returns s, whose commits kick the GC.
func (g *GC) Watch(s Store) Store { return watched{Store: s, g: g} }

type watched struct {
	Store
	g *GC
}

func (s watched) NewWriter(ctx context.Context) (Writer, error) {
	w, err := s.Store.NewWriter(ctx)
	if err != nil {
		return nil, err
	}
	return kickWriter{Writer: w, g: s.g}, nil
}

type kickWriter struct {
	Writer
	g *GC
}

func (w kickWriter) Commit(ctx context.Context, size int64, d digest.Digest) (Info, error) {
	info, err := w.Writer.Commit(ctx, size, d)
	if err == nil {
		w.g.Kick()
	}
	return info, err
}

// Run checks now, on every kick and every interval until ctx ends. It
// deletes through s (pass the announcing store) and spares what busy
// reports.
func (g *GC) Run(ctx context.Context, s Store, busy func(digest.Digest) bool) {
	tick := time.NewTicker(g.interval)
	defer tick.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	backoff := retryMin
	waiting := false // short of High: commits wait for the retry, not each a new eviction
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-g.kick:
			if waiting {
				continue
			}
		case <-retry.C:
		}
		short, err := g.Check(ctx, s, busy)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			g.log.Warn("disk quota: eviction failed", "err", err)
		}
		waiting = short || err != nil
		if waiting {
			retry.Reset(backoff)
			backoff = min(2*backoff, g.interval)
		} else {
			backoff = retryMin
		}
	}
}

// Check evicts down to Low when usage is above High. short: usage is still
// above High afterwards (pinned or busy content, or an error).
func (g *GC) Check(ctx context.Context, s Store, busy func(digest.Digest) bool) (short bool, err error) {
	used, _, err := s.Usage(ctx)
	if err != nil || used <= g.quota.High {
		return false, err
	}
	st, err := Evict(ctx, s, g.quota.Low, busy)
	g.runs.Add(1)
	g.blobs.Add(int64(st.Blobs))
	g.bytes.Add(st.Bytes)
	g.log.Info("disk quota: evicted least recently used content", "images", st.Images, "blobs", st.Blobs,
		"bytes", st.Bytes, "before", st.Before, "after", st.After, "low", g.quota.Low,
		"skipped_busy", st.SkippedBusy, "duration", st.Duration)
	if err == nil && st.After > g.quota.High {
		g.log.Warn("disk quota: store still above its high watermark: the rest is pinned, in use, or blobs of no image in their grace period",
			"bytes", st.After, "high", g.quota.High)
	}
	return err != nil || st.After > g.quota.High, err
}
