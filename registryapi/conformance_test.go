package registryapi

import (
	"net/url"
	"testing"

	"github.com/imgmesh/imgmesh/internal/conformance"
)

// TestConformance runs the OCI distribution-spec conformance program with
// every category enabled against the in-process server (storeSource over a
// fresh memory store) and requires every test and category to pass.
func TestConformance(t *testing.T) {
	runConformance(t, Options{})
}

// runConformance runs the program against New(opts) (zero Source and Store:
// storeSource over a fresh memory store).
func runConformance(t *testing.T, opts Options) {
	t.Helper()
	ts := newTestServer(t, func(o *Options) {
		if opts.Source != nil {
			o.Source, o.Store = opts.Source, opts.Store
		}
	})
	u, _ := url.Parse(ts.URL)
	conformance.Run(t, u.Host)
}
