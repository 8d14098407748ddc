package main

import (
	"log/slog"
	"path/filepath"

	"github.com/imgmesh/imgmesh/discovery"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/prefetch"
)

// newPrefetch loads the node's orders and reports from DATA/prefetch.json.
// It exists before the mesh starts, so that gossip arriving at once (a
// join's push/pull) is kept; startPrefetch then carries orders out.
func newPrefetch(cfg Config, log *slog.Logger) (*prefetch.Manager, error) {
	return prefetch.New(prefetch.Options{Path: filepath.Join(cfg.DataDir, "prefetch.json"), Logger: log})
}

// prefetchChannel carries prefetch orders and reports over the fleet's gossip.
func prefetchChannel(pf *prefetch.Manager) discovery.Channel {
	return discovery.Channel{OnMessage: pf.OnMessage, State: pf.State, OnState: pf.OnState}
}

// startPrefetch makes pf carry out the orders that select this node, pulling
// through n and pinning in store. m is nil for a lone node (--mesh=false),
// which carries out orders made on itself.
func startPrefetch(pf *prefetch.Manager, cfg Config, n *node.Node, store any, m *mesh) error {
	rt := prefetch.Runtime{Self: cfg.NodeName, Labels: cfg.Labels, Puller: n, DefaultRegistry: cfg.defaultRegistry()}
	if p, ok := store.(prefetch.Pinner); ok {
		rt.Pinner = p
	}
	if m != nil && m.fleet != nil {
		f := m.fleet
		rt.Self, rt.Broadcast, rt.SendTo = f.LocalName(), f.BroadcastNamed, f.SendTo
		rt.Members = func() []prefetch.Member {
			var out []prefetch.Member
			for _, mem := range f.Members() {
				out = append(out, prefetch.Member{Name: mem.Name, Labels: mem.Meta.Labels, Alive: mem.State == discovery.StateAlive})
			}
			return out
		}
	}
	return pf.Start(rt)
}
