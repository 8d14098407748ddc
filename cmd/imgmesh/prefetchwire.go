package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

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
	if rt.Self == "" {
		rt.Self, _ = os.Hostname()
		if rt.Self == "" {
			rt.Self = "imgmesh"
		}
	}
	return pf.Start(rt)
}

// nodeNameFile keeps a generated node name in the data directory.
const nodeNameFile = "node-name"

// keptNodeName is the name this node had before, or a new one (the host
// name and a random suffix) kept in dataDir: a device restarted in the
// middle of a rollout is the same fleet member, with the same reports,
// rather than a new one while its old name waits for it.
func keptNodeName(dataDir string) (string, error) {
	p := filepath.Join(dataDir, nodeNameFile)
	if b, err := os.ReadFile(p); err == nil {
		name := strings.TrimSpace(string(b))
		if name == "" || len(name) > 128 || strings.ContainsAny(name, " \t\n") {
			return "", fmt.Errorf("%s: not a node name: remove it, or give --node-name", p)
		}
		return name, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("node name: %w", err)
	}
	host, _ := os.Hostname()
	if host == "" {
		host = "imgmesh"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := host + "-" + hex.EncodeToString(b[:])
	if err := os.WriteFile(p, []byte(name+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("keep the node name: %w", err)
	}
	return name, nil
}
