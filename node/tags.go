package node

import (
	"context"
	"fmt"
	"slices"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Tags lists name's tags: upstream's (bounded by TagTimeout) merged with the
// local index, or the local index alone when upstream is unreachable.
func (n *Node) Tags(ctx context.Context, name Name) ([]string, error) {
	local, err := n.store.Tags(ctx, n.Key(name))
	if err != nil {
		return nil, err
	}
	var remote []string
	if n.mirrors(name) {
		tctx, cancel := context.WithTimeout(ctx, n.opts.TagTimeout)
		remote, err = n.up.Tags(tctx, name.NS, name.Repo)
		cancel()
		if err != nil {
			n.log.LogAttrs(ctx, levelFor(err), "tag list not available upstream")
			remote = nil
		}
	}
	if len(local) == 0 && remote == nil {
		return nil, fmt.Errorf("repository %s: %w", name.Repo, blobstore.ErrNotFound)
	}
	all := append(slices.Clone(remote), local...)
	slices.Sort(all)
	return slices.Compact(all), nil
}
