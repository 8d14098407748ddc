package registryapi

import (
	"testing"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// TestConformanceNode runs the conformance program against the real
// *node.Node as Source, in local-only mode (no upstream).
func TestConformanceNode(t *testing.T) {
	bin, err := conformanceBinary()
	if err != nil {
		t.Skip("conformance program not found; TestConformance reports it")
	}
	store := blobstore.NewMemory()
	n := node.New(node.Options{Store: store})
	t.Cleanup(func() { _ = n.Close() })
	runConformance(t, bin, Options{Source: n, Store: store})
}
