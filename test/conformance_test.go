package e2e

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/imgmesh/imgmesh/internal/conformance"
)

// TestConformanceBinary: the real binary, as a pure local registry (no
// upstream), passes the OCI distribution-spec conformance program with
// every category enabled.
func TestConformanceBinary(t *testing.T) {
	t.Parallel()
	conformance.Binary(t) // skip early when missing

	// No upstream at all: the config file empties the default list.
	cfg := filepath.Join(t.TempDir(), "imgmesh.yaml")
	if err := os.WriteFile(cfg, []byte("upstreams: []\nrestrict_upstreams: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "", "--config", cfg, "--restrict-upstreams")

	conformance.Run(t, n.addr)
	if n.proc.exited() {
		t.Errorf("imgmesh exited during the conformance run: %v", n.proc.err)
	}
}
