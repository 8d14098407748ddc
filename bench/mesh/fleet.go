package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net/http/httptest"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

const (
	upstreamNS   = "bench"          // the probe node's upstream name (?ns=)
	upstreamRepo = "bench/upstream" // where the upstream holds the miss blobs
	fleetRepo    = "bench/fleet"    // blobs pushed to fleet nodes for lookups
	smallBlob    = 4 << 10          // size of every small blob
	headSet      = 20               // distinct digests the HEAD misses cycle over
)

// fleet measures (b) and (c) on one fleet: a probe node whose upstream is
// an in-process registry and that keeps the node's default lookup timeout,
// then e.cfg.fleet peers that join it.
//
//	(b) misses at the probe: alone (fleet empty), then with the peers
//	    healthy (holding none of it), silent (SIGSTOP) and dead (SIGKILL).
//	(c) lookups among the peers: HEADs for a blob another peer holds.
func fleet(ctx context.Context, e *env, res *Results) error {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer up.Close()
	defer e.ps.StopAll() // the nodes first: they may hold connections to up
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	small := func() []byte {
		b := make([]byte, smallBlob)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	// HEAD misses reuse a few digests (a HEAD stores nothing); every GET
	// miss needs a blob of its own (a GET stores it).
	per := e.cfg.misses/2 + 1 // GETs per fleet state
	e.step("pushing %d small blobs to the in-process upstream", headSet+4*per)
	var heads []string
	gets := make([][]byte, 4*per)
	for i := range headSet + len(gets) {
		data := small()
		d, err := pushBytes(ctx, up.URL, upstreamRepo, data)
		if err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
		if i < headSet {
			heads = append(heads, d)
		} else {
			gets[i-headSet] = data
		}
	}

	nodes, err := startNodes(ctx, e.ps, []nodeOpts{e.opts("probe", upstreamNS+"="+up.URL, "")})
	if err != nil {
		return err
	}
	probe := nodes[0]
	miss := func(state string) error {
		e.step("(b) %d misses at the probe node, fleet %s", e.cfg.misses, state)
		h0, _, err := scrape(ctx, []*node{probe})
		if err != nil {
			return err
		}
		s, err := misses(ctx, probe, state, heads, gets[:per], e.cfg.misses)
		gets = gets[per:]
		if err != nil {
			return err
		}
		h1, _, err := scrape(ctx, []*node{probe})
		if err != nil {
			return err
		}
		h := addBuckets(h1, h0, true)
		s.LookupP50, s.Lookups = quantile(h, .5)
		s.LookupP99, _ = quantile(h, .99)
		s.LookupP50, s.LookupP99 = s.LookupP50*1e3, s.LookupP99*1e3
		if len(res.Misses) > 0 { // against the baseline, the empty fleet
			base := res.Misses[0]
			s.AddedHeadP99, s.AddedGetP99 = s.HeadP99-base.HeadP99, s.GetP99-base.GetP99
			s.Met = math.Max(s.AddedHeadP99, s.AddedGetP99) < goalMissAdded
		}
		res.Misses = append(res.Misses, s)
		return nil
	}
	// Warm the probe's connections to the upstream and from this client.
	if code, _, err := head(ctx, blobURL(probe.base, upstreamRepo, heads[0], upstreamNS)); err != nil || code != 200 {
		return fmt.Errorf("probe HEAD through the upstream: %d %v (log: %s)", code, err, probe.p.Tail())
	}
	if err := miss("empty (no other member)"); err != nil {
		return err
	}

	e.step("starting %d peers that join the probe's gossip", e.cfg.fleet)
	var opts []nodeOpts
	for i := range e.cfg.fleet {
		o := e.opts(fmt.Sprintf("peer%02d", i+1), "none", lookupBudget.String())
		o.join = []string{probe.gossip}
		opts = append(opts, o)
	}
	peers, err := startNodes(ctx, e.ps, opts)
	if err != nil {
		return err
	}
	all := append([]*node{probe}, peers...)
	start := time.Now()
	if err := waitFleet(ctx, all, len(all)); err != nil {
		return err
	}
	e.step("fleet of %d converged in %s", len(all), time.Since(start).Round(time.Millisecond))

	if res.Lookup, err = lookups(ctx, e, peers, small); err != nil {
		return err
	}
	if err := miss(fmt.Sprintf("%d healthy peers, none holding the blob", len(peers))); err != nil {
		return err
	}
	for _, p := range peers {
		if err := p.p.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
	}
	if err := miss(fmt.Sprintf("%d silent peers (SIGSTOP: connect, never answer)", len(peers))); err != nil {
		return err
	}
	for _, p := range peers {
		p.p.Kill()
	}
	return miss(fmt.Sprintf("%d dead peers (SIGKILL)", len(peers)))
}

// misses times count misses at node n, alternating a HEAD of a digest from
// heads and a GET of a fresh blob from gets; both exist only upstream.
// Every answer is checked: HEAD 200 with the size, GET the right bytes.
func misses(ctx context.Context, n *node, state string, heads []string, gets [][]byte, count int) (Misses, error) {
	s := Misses{State: state}
	var hs, gs []time.Duration
	for i := range count {
		start := time.Now()
		if i%2 == 0 {
			code, size, err := head(ctx, blobURL(n.base, upstreamRepo, heads[(i/2)%len(heads)], upstreamNS))
			if err != nil || code != 200 || size != smallBlob {
				return s, fmt.Errorf("HEAD miss (%s): status %d size %d: %v (log: %s)", state, code, size, err, n.p.Tail())
			}
			hs = append(hs, time.Since(start))
			continue
		}
		data := gets[i/2]
		d, err := benchkit.Get(ctx, ctl, blobURL(n.base, upstreamRepo, digestOf(data), upstreamNS),
			int64(len(data)), digestOf(data), true, reqTimeout)
		if err != nil {
			return s, fmt.Errorf("GET miss (%s): %w (log: %s)", state, err, n.p.Tail())
		}
		gs = append(gs, d)
	}
	s.Heads, s.Gets = len(hs), len(gs)
	s.HeadP50, s.HeadP99 = ms(percentile(hs, .5)), ms(percentile(hs, .99))
	s.GetP50, s.GetP99 = ms(percentile(gs, .5)), ms(percentile(gs, .99))
	return s, nil
}

// lookupBudget is the fleet peers' --lookup-timeout in (c): long enough
// that the latency measured is the lookup's, not the budget's.
const lookupBudget = time.Second

// lookups measures (c): one small blob pushed to each peer, then HEADs of
// a random blob on a random other peer (a provider lookup and a data-plane
// stat), next to HEADs of a peer's own blob (the HTTP baseline), and the
// lookup histograms of every peer over the same requests.
func lookups(ctx context.Context, e *env, peers []*node, small func() []byte) (*Lookup, error) {
	e.step("(c) pushing one blob to each of %d peers", len(peers))
	ds := make([]string, len(peers))
	for i, p := range peers {
		d, err := pushBytes(ctx, p.base, fleetRepo, small())
		if err != nil {
			return nil, err
		}
		ds[i] = d
	}
	for i := range peers { // the announcements have landed when another peer sees each blob
		q := peers[(i+1)%len(peers)]
		err := benchkit.Poll(ctx, q.p, fleetTimeout, "seeing "+peers[i].name+"'s blob", func(ctx context.Context) (bool, error) {
			code, _, err := head(ctx, blobURL(q.base, fleetRepo, ds[i], ""))
			return err == nil && code == 200, nil
		})
		if err != nil {
			return nil, err
		}
	}
	node0, prov0, err := scrape(ctx, peers)
	if err != nil {
		return nil, err
	}
	e.step("(c) %d lookups among the peers", e.cfg.lookups)
	l := &Lookup{Peers: len(peers), Budget: lookupBudget.String()}
	var miss, local []time.Duration
	for range e.cfg.lookups {
		i := rand.IntN(len(peers))
		j := (i + 1 + rand.IntN(len(peers)-1)) % len(peers) // any other peer
		start := time.Now()
		code, size, err := head(ctx, blobURL(peers[j].base, fleetRepo, ds[i], ""))
		d := time.Since(start)
		if err != nil {
			return nil, err
		}
		if code != 200 || size != smallBlob {
			l.NotFound++
		} else {
			miss = append(miss, d)
		}
		start = time.Now()
		if code, _, err := head(ctx, blobURL(peers[j].base, fleetRepo, ds[j], "")); err != nil || code != 200 {
			return nil, fmt.Errorf("local HEAD on %s: %d %v", peers[j].name, code, err)
		}
		local = append(local, time.Since(start))
	}
	node1, prov1, err := scrape(ctx, peers)
	if err != nil {
		return nil, err
	}
	l.Found = len(miss)
	l.HeadP50, l.HeadP99 = ms(percentile(miss, .5)), ms(percentile(miss, .99))
	l.LocalP50, l.LocalP99 = ms(percentile(local, .5)), ms(percentile(local, .99))
	l.EstP50, l.EstP99 = l.HeadP50-l.LocalP50, l.HeadP99-l.LocalP50
	nodeH, provH := addBuckets(node1, node0, true), addBuckets(prov1, prov0, true)
	l.NodeHistP50, l.NodeHistCount = quantile(nodeH, .5)
	l.NodeHistP99, _ = quantile(nodeH, .99)
	l.ProvHistP50, l.ProvHistCount = quantile(provH, .5)
	l.ProvHistP99, _ = quantile(provH, .99)
	l.NodeHistP50, l.NodeHistP99 = l.NodeHistP50*1e3, l.NodeHistP99*1e3
	l.ProvHistP50, l.ProvHistP99 = l.ProvHistP50*1e3, l.ProvHistP99*1e3
	l.Met = l.NotFound == 0 && l.EstP50 < goalLookupP50
	return l, nil
}

// scrape sums the node and provider lookup histograms over nodes.
func scrape(ctx context.Context, nodes []*node) (nodeH, provH []bucket, err error) {
	for _, n := range nodes {
		text, err := metricsText(ctx, n.base)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", n.name, err)
		}
		nodeH = addBuckets(nodeH, histogram(text, "imgmesh_node_lookup_seconds"), false)
		provH = addBuckets(provH, histogram(text, "imgmesh_provider_lookup_seconds"), false)
	}
	return nodeH, provH, nil
}
