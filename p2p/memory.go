package p2p

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

var _ Router = (*MemoryRouter)(nil)

// MemoryNetwork is the shared state of a fleet of MemoryRouters: who holds
// which key. The zero value is not usable; use NewMemoryNetwork.
type MemoryNetwork struct {
	mu      sync.Mutex
	holders map[string][]string // key -> router IDs, in announce order
	routers map[string]*MemoryRouter
}

// NewMemoryNetwork returns an empty in-memory fleet.
func NewMemoryNetwork() *MemoryNetwork {
	return &MemoryNetwork{holders: map[string][]string{}, routers: map[string]*MemoryRouter{}}
}

// MemoryRouter is an in-memory Router for tests. Unlike the DHT, Withdraw
// takes effect at once for every router of the network.
type MemoryRouter struct {
	net     *MemoryNetwork
	id      string
	dataURL string
}

// NewRouter adds a router with peer ID id to the network. dataURL is what
// other routers report as its Holder.DataURL.
func (n *MemoryNetwork) NewRouter(id, dataURL string) *MemoryRouter {
	r := &MemoryRouter{net: n, id: id, dataURL: dataURL}
	n.mu.Lock()
	n.routers[id] = r
	n.mu.Unlock()
	return r
}

// ID implements Router.
func (r *MemoryRouter) ID() string { return r.id }

// PeerCount implements Router: every other router of the network.
func (r *MemoryRouter) PeerCount() int {
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	return len(r.net.routers) - 1
}

// Advertise implements Router.
func (r *MemoryRouter) Advertise(ctx context.Context, keys ...string) error {
	if err := checkKeys(keys); err != nil {
		return err
	}
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	for _, k := range keys {
		if !slices.Contains(r.net.holders[k], r.id) {
			r.net.holders[k] = append(r.net.holders[k], r.id)
		}
	}
	return ctx.Err()
}

// Withdraw implements Router; other routers stop finding r at once.
func (r *MemoryRouter) Withdraw(ctx context.Context, keys ...string) error {
	if err := checkKeys(keys); err != nil {
		return err
	}
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	for _, k := range keys {
		hs := slices.DeleteFunc(r.net.holders[k], func(id string) bool { return id == r.id })
		if len(hs) == 0 {
			delete(r.net.holders, k)
		} else {
			r.net.holders[k] = hs
		}
	}
	return ctx.Err()
}

// Lookup implements Router.
func (r *MemoryRouter) Lookup(ctx context.Context, key string, count int) ([]Holder, error) {
	if _, err := KeyCID(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.net.mu.Lock()
	defer r.net.mu.Unlock()
	var out []Holder
	for _, id := range r.net.holders[key] {
		if len(out) >= count {
			break
		}
		if id == r.id {
			continue
		}
		h := Holder{ID: id}
		if o := r.net.routers[id]; o != nil {
			h.DataURL = o.dataURL
		}
		out = append(out, h)
	}
	return out, nil
}

func checkKeys(keys []string) error {
	for _, k := range keys {
		if _, err := KeyCID(k); err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
	}
	return nil
}
