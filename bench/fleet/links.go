package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The link probe measures what the benchmark's shaped network carries
// between devices for a few traffic patterns, with no imgmesh in the way:
// the ceiling a swarm's way of asking for pieces can reach on it.

// LinkPattern is a way the devices move bytes among themselves.
type LinkPattern string

// The patterns of ProbeLinks, in the order they run.
const (
	// Streams: each device reads one endless body from each of the next
	// probeFanout devices (a ring): long flows, every link as loaded in as
	// out.
	Streams LinkPattern = "streams"
	// RandomPieces: each device keeps probeRequests 1 MiB requests out,
	// each to a device picked at random; a device serves probeSlots bodies
	// at once and refuses more (503: the asker waits 5-25 ms and picks
	// again), as imgmesh's swarm does.
	RandomPieces LinkPattern = "random-pieces"
	// StickyPieces: each device keeps probeFanout requests out, each asking
	// the same device again until refused, then another at random; a device
	// serves probeFanout at once: asks and slots balance.
	StickyPieces LinkPattern = "sticky-pieces"
)

// LinkPatterns is every pattern, in run order.
var LinkPatterns = []LinkPattern{Streams, RandomPieces, StickyPieces}

const (
	probePort     = 5009
	probePiece    = 1 << 20
	probeFanout   = 4
	probeRequests = 6
	probeSlots    = 4
)

// LinkResult is one pattern's measure: the bytes all devices received per
// second, and that over what their links carry (N·B).
type LinkResult struct {
	Pattern   LinkPattern `json:"pattern"`
	BytesPerS float64     `json:"bytes_per_s"`
	OfLinks   float64     `json:"of_links"`
}

// ProbeLinks builds the namespaced network for n devices on links of rate
// link (bytes/s) and runs each pattern for d, one after the other. It
// removes everything it made before it returns. Root only (CheckNetns).
func ProbeLinks(ctx context.Context, n int, link float64, d time.Duration, log io.Writer) ([]LinkResult, error) {
	if n < 2 {
		return nil, errors.New("the link probe needs at least 2 devices")
	}
	l, err := newLab(ctx, n, link, link)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = l.close(false) }()
	addrs := make([]string, n)
	var servers []*http.Server
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	for i, ns := range l.devices {
		addrs[i] = fmt.Sprintf("%s.%d:%d", l.subnet, i+1, probePort)
		var ln net.Listener
		var lerr error
		if err := inNetns(ns, func() { ln, lerr = net.Listen("tcp", addrs[i]) }); err != nil {
			return nil, err
		}
		if lerr != nil {
			return nil, fmt.Errorf("probe listener in %s: %w", ns, lerr)
		}
		s := &http.Server{Handler: probeHandler(), ReadHeaderTimeout: 5 * time.Second}
		servers = append(servers, s)
		go func() { _ = s.Serve(ln) }()
	}
	var out []LinkResult
	for _, p := range LinkPatterns {
		fmt.Fprintf(log, "· links: %s for %s\n", p, d)
		got, err := probe(ctx, l, addrs, p, d)
		if err != nil {
			return out, fmt.Errorf("%s: %w", p, err)
		}
		rate := float64(got) / d.Seconds()
		out = append(out, LinkResult{Pattern: p, BytesPerS: rate, OfLinks: rate / (float64(n) * link)})
	}
	return out, nil
}

// probeHandler serves /stream (an endless body) and /piece (1 MiB, at most
// probeSlots at once; sticky askers get probeFanout).
func probeHandler() http.Handler {
	block := make([]byte, probePiece)
	random, sticky := make(chan struct{}, probeSlots), make(chan struct{}, probeFanout)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for r.Context().Err() == nil {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("GET /piece", func(w http.ResponseWriter, r *http.Request) {
		slots := random
		if r.URL.Query().Has("sticky") {
			slots = sticky
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(block)))
		_, _ = w.Write(block)
	})
	return mux
}

// probe runs pattern p for d and returns the body bytes the devices
// received within d.
func probe(ctx context.Context, l *lab, addrs []string, p LinkPattern, d time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var got atomic.Int64
	var wg sync.WaitGroup
	n := len(addrs)
	for i := range n {
		c := l.client(i)
		others := make([]string, 0, n-1)
		for k := 1; k < n; k++ {
			others = append(others, addrs[(i+k)%n])
		}
		switch p {
		case Streams:
			for _, a := range others[:min(probeFanout, len(others))] {
				wg.Go(func() { readStream(ctx, c, a, &got) })
			}
		case RandomPieces, StickyPieces:
			asks := probeRequests
			if p == StickyPieces {
				asks = probeFanout
			}
			for range asks {
				wg.Go(func() { askPieces(ctx, c, others, p == StickyPieces, &got) })
			}
		}
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return 0, err
	}
	return got.Load(), nil
}

// readStream counts what one endless body brings until ctx ends.
func readStream(ctx context.Context, c *http.Client, addr string, got *atomic.Int64) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/stream", nil)
	if err != nil {
		return
	}
	resp, err := c.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	countBody(ctx, resp.Body, make([]byte, 256<<10), got)
}

// countBody adds to got the bytes of body read before ctx ends.
func countBody(ctx context.Context, body io.Reader, buf []byte, got *atomic.Int64) {
	for {
		k, err := body.Read(buf)
		if ctx.Err() != nil {
			return // past the deadline: not counted
		}
		got.Add(int64(k))
		if err != nil {
			return
		}
	}
}

// askPieces asks for pieces until ctx ends, counting the bytes that
// arrived in time (a piece cut by the deadline counts for what came).
func askPieces(ctx context.Context, c *http.Client, others []string, sticky bool, got *atomic.Int64) {
	buf := make([]byte, 256<<10)
	query := ""
	if sticky {
		query = "?sticky"
	}
	to := others[rand.IntN(len(others))]
	for ctx.Err() == nil {
		if !sticky {
			to = others[rand.IntN(len(others))]
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+to+"/piece"+query, nil)
		if err != nil {
			return
		}
		resp, err := c.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			// Refused (503), or a reset under load: another device, after a
			// pause.
			if err == nil {
				resp.Body.Close()
			}
			to = others[rand.IntN(len(others))]
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond):
			}
			continue
		}
		countBody(ctx, resp.Body, buf, got)
		resp.Body.Close()
	}
}
