package registryapi

import (
	"testing"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// TestConformanceNode runs the conformance program against the real
// *node.Node as Source, in local-only mode (no upstream).
func TestConformanceNode(t *testing.T) {
	store := blobstore.NewMemory()
	n := node.New(node.Options{Store: store})
	t.Cleanup(func() { _ = n.Close() })
	runConformance(t, Options{Source: n, Store: store})
}
