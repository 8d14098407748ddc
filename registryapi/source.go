package registryapi

import (
	"context"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/node"
)

// Source is the pull path, implemented by *node.Node: local store first, then
// elsewhere. Errors wrap blobstore.ErrNotFound when nothing has the content
// and node.ErrUpstream when the upstream failed.
type Source interface {
	// Manifest resolves ref (a tag or a digest) in name. head: Body may be nil.
	Manifest(ctx context.Context, name node.Name, ref string, head bool) (node.Manifest, error)
	// Blob returns blob d of name. head: Body is nil.
	Blob(ctx context.Context, name node.Name, d digest.Digest, head bool) (node.Content, error)
	// Tags lists tags of name (upstream's list when reachable, else local).
	Tags(ctx context.Context, name node.Name) ([]string, error)
}
