package p2p

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipfs/go-cid"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/protocol/identify"
	"github.com/multiformats/go-multihash"
)

const (
	// putTimeout bounds one ADD_PROVIDER message to one peer.
	putTimeout = 5 * time.Second
	// provideConcurrency is how many keys are announced at once.
	provideConcurrency = 8
	// joinDebounce gathers peers that join together into one catch-up.
	joinDebounce = 200 * time.Millisecond
	// joinRetry is the pause before telling a joined peer again after a
	// failure.
	joinRetry = 2 * time.Second
)

// Advertise implements Router. It announces keys to the peers closest to
// each key in the DHT and keeps announcing them every ReprovideInterval, and
// to each peer that joins later and is among a key's closest, until
// Withdraw. With no peer yet it succeeds: the keys reach peers as they join.
// The keys stay advertised even when the announcement fails or ctx ends.
func (p *Host) Advertise(ctx context.Context, keys ...string) error {
	cids, err := keyCIDs(keys)
	if err != nil {
		return err
	}
	if p.closed() {
		return ErrClosed
	}
	p.mu.Lock()
	for i, k := range keys {
		p.keys[k] = cids[i]
	}
	p.metrics.advertised.Set(float64(len(p.keys)))
	p.mu.Unlock()
	return p.provideAll(ctx, cids)
}

// Withdraw implements Router. This node stops announcing keys at once: no
// reprovide, nothing told to peers that join later. This node never stores
// a provider record of itself, so its own answers to other nodes never name
// it. Peers that already received a record keep returning it until it
// expires, 3 × their ReprovideInterval after it was last announced (3h by
// default); callers fall back to another holder when one lacks the content.
func (p *Host) Withdraw(ctx context.Context, keys ...string) error {
	if _, err := keyCIDs(keys); err != nil {
		return err
	}
	p.mu.Lock()
	for _, k := range keys {
		delete(p.keys, k)
	}
	p.metrics.advertised.Set(float64(len(p.keys)))
	p.mu.Unlock()
	return ctx.Err()
}

// Lookup implements Router. A context without a deadline gets
// DefaultLookupTimeout.
func (p *Host) Lookup(ctx context.Context, key string, count int) ([]Holder, error) {
	c, err := KeyCID(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if p.closed() {
		return nil, ErrClosed
	}
	if count <= 0 {
		return nil, nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultLookupTimeout)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	var out []Holder
	seen := map[peer.ID]bool{}
	// Count 0 asks for every provider: the DHT's own count would include
	// this node when others hold a record of it. We stop at count instead.
	for ai := range p.dht.FindProvidersAsync(ctx, c, 0) {
		if ai.ID == p.h.ID() || seen[ai.ID] {
			continue
		}
		seen[ai.ID] = true
		h := p.holder(ai)
		out = append(out, h)
		if len(out) >= count {
			cancel()
			break
		}
	}
	result := "found"
	if len(out) == 0 {
		result = "none"
	}
	p.metrics.lookup.WithLabelValues(result).Observe(time.Since(start).Seconds())
	return out, nil
}

// holder describes a provider found by a lookup. A provider we know no
// Meta of is dialled in the background, so the next lookup has its DataURL.
func (p *Host) holder(ai peer.AddrInfo) Holder {
	pi := p.peerInfo(ai.ID)
	h := Holder{ID: pi.ID, DataURL: pi.DataURL(), Addrs: pi.Addrs}
	if len(h.Addrs) == 0 {
		h.Addrs = p2pAddrs(ai.ID, ai.Addrs)
	}
	if !pi.HasMeta && !pi.Connected && len(ai.Addrs) > 0 {
		select {
		case p.dial <- ai:
		default:
		}
	}
	return h
}

// provideAll announces cids, a few at a time, and joins the errors.
func (p *Host) provideAll(ctx context.Context, cids []cid.Cid) error {
	errs := make([]error, len(cids))
	sem := make(chan struct{}, provideConcurrency)
	var wg sync.WaitGroup
	for i, c := range cids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = ctx.Err()
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			errs[i] = p.provide(ctx, c)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// provide tells the peers closest to c that this node provides it. Unlike
// the DHT's Provide it does not record this node in its own provider store,
// which has no delete, so that Withdraw holds here at once.
func (p *Host) provide(ctx context.Context, c cid.Cid) error {
	mh := c.Hash()
	peers, err := p.dht.GetClosestPeers(ctx, string(mh))
	if err != nil && !errors.Is(err, kb.ErrLookupFailure) {
		return fmt.Errorf("announce %s: %w", c, err)
	}
	// A peer that has just connected may not be in the routing table yet.
	for _, id := range p.connectedDHTPeers(ctx) {
		if !slices.Contains(peers, id) && p.amongClosest(id, mh) {
			peers = append(peers, id)
		}
	}
	if len(peers) == 0 {
		return nil // nobody to tell yet: joining peers are told
	}
	self := peer.AddrInfo{ID: p.h.ID(), Addrs: p.dht.FilteredAddrs()}
	var ok atomic.Int32
	errs := make([]error, len(peers))
	var wg sync.WaitGroup
	for i, to := range peers {
		wg.Go(func() {
			errs[i] = p.put(ctx, to, mh, self)
			if errs[i] == nil {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() == 0 {
		return fmt.Errorf("announce %s: no peer took it: %w", c, errors.Join(errs...))
	}
	return nil
}

func (p *Host) put(ctx context.Context, to peer.ID, mh multihash.Multihash, self peer.AddrInfo) error {
	ctx, cancel := context.WithTimeout(ctx, putTimeout)
	defer cancel()
	return p.msgr.PutProviderAddrs(ctx, to, mh, self)
}

// reprovideLoop announces every advertised key each ReprovideInterval, and
// tells peers that join the keys they are now among the closest for.
func (p *Host) reprovideLoop(ctx context.Context) {
	defer p.wg.Done()
	t := time.NewTicker(p.opts.ReprovideInterval)
	defer t.Stop()
	var retry <-chan time.Time // set while joined peers wait for a retry
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cids := p.advertised()
			start := time.Now()
			err := p.provideAll(ctx, cids)
			p.log.Debug("reprovided", "keys", len(cids), "took", time.Since(start), "err", err)
		case <-p.kick:
			select {
			case <-ctx.Done():
				return
			case <-time.After(joinDebounce):
			}
			if p.tellJoined(ctx) {
				retry = time.After(joinRetry)
			}
		case <-retry:
			retry = nil
			if p.tellJoined(ctx) {
				retry = time.After(joinRetry)
			}
		}
	}
}

func (p *Host) advertised() []cid.Cid {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]cid.Cid, 0, len(p.keys))
	for _, c := range p.keys {
		out = append(out, c)
	}
	return out
}

// tellJoined sends each peer that joined since the last call the provider
// records of the advertised keys it is now among the closest peers for, as
// Kademlia hands records to a new node. Peers that failed and are still
// connected are kept for another try, reported by the result.
func (p *Host) tellJoined(ctx context.Context) (retry bool) {
	p.mu.Lock()
	joined := p.joined
	p.joined = map[peer.ID]struct{}{}
	p.mu.Unlock()
	cids := p.advertised()
	if len(joined) == 0 || len(cids) == 0 {
		return false
	}
	self := peer.AddrInfo{ID: p.h.ID(), Addrs: p.dht.FilteredAddrs()}
	var wg sync.WaitGroup
	for to := range joined {
		wg.Go(func() {
			sent := 0
			for _, c := range cids {
				if !p.amongClosest(to, c.Hash()) {
					continue
				}
				if err := p.put(ctx, to, c.Hash(), self); err != nil {
					p.log.Debug("telling a joined peer failed", "peer", to, "err", err)
					if ctx.Err() == nil && p.h.Network().Connectedness(to) == network.Connected {
						p.mu.Lock()
						p.joined[to] = struct{}{}
						p.mu.Unlock()
					}
					return
				}
				sent++
			}
			p.log.Debug("told joined peer our keys", "peer", to, "keys", sent)
		})
	}
	wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.joined) > 0
}

// amongClosest tells whether peer id is one of the bucket-size peers of our
// routing table closest to key (it may not be in the table yet).
func (p *Host) amongClosest(id peer.ID, key multihash.Multihash) bool {
	k := p.dht.BucketSize()
	near := p.dht.RoutingTable().NearestPeers(kb.ConvertKey(string(key)), k)
	if len(near) < k {
		return true
	}
	if slices.Contains(near, id) {
		return true
	}
	return kb.Closer(id, near[len(near)-1], string(key))
}

// connectedDHTPeers returns the connected peers that speak our DHT, waiting
// (within ctx) for identify to finish on connections still running it.
func (p *Host) connectedDHTPeers(ctx context.Context) []peer.ID {
	if h, ok := p.h.(interface{ IDService() identify.IDService }); ok {
		for _, c := range p.h.Network().Conns() {
			select {
			case <-h.IDService().IdentifyWait(c):
			case <-ctx.Done():
				return nil
			}
		}
	}
	var out []peer.ID
	for _, id := range p.h.Network().Peers() {
		if ok, _ := p.h.Peerstore().SupportsProtocols(id, p.kadID); len(ok) > 0 {
			out = append(out, id)
		}
	}
	return out
}

func keyCIDs(keys []string) ([]cid.Cid, error) {
	out := make([]cid.Cid, len(keys))
	for i, k := range keys {
		c, err := KeyCID(k)
		if err != nil {
			return nil, err
		}
		out[i] = c
	}
	return out, nil
}
