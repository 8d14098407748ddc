package fleet

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/internal/testlog"
)

// TestProbeLinks (root): on 3 devices at 40 Mbit/s every pattern moves
// bytes, none faster than the shaped links allow (the probe measures the
// shaping, not loopback), long streams nearly fill them, and nothing is
// left behind.
func TestProbeLinks(t *testing.T) {
	if err := CheckNetns(); err != nil {
		if os.Getenv("CI") == "true" && os.Geteuid() == 0 {
			t.Fatal(err)
		}
		t.Skipf("skipping the link probe: %v", err)
	}
	const link = 40e6 / 8
	var log testlog.Buffer
	res, err := ProbeLinks(context.Background(), 3, link, 4*time.Second, &log)
	if err != nil {
		t.Fatalf("ProbeLinks: %v\n%s", err, log.String())
	}
	if len(res) != len(LinkPatterns) {
		t.Fatalf("%d results, want %d", len(res), len(LinkPatterns))
	}
	for _, r := range res {
		if r.OfLinks <= 0.2 || r.OfLinks > 1.02 {
			t.Errorf("%s: %.0f B/s, %.2f of the links; want a share of them (0.2, 1.02]", r.Pattern, r.BytesPerS, r.OfLinks)
		}
	}
	if r := res[0]; r.Pattern != Streams || r.OfLinks < 0.8 {
		t.Errorf("%s carried %.2f of the links, want at least 0.8 for long flows", r.Pattern, r.OfLinks)
	}
	checkNoNamespaces(t)
}

func TestProbeLinksNeedsTwoDevices(t *testing.T) {
	if _, err := ProbeLinks(context.Background(), 1, 1e6, time.Second, new(testlog.Buffer)); err == nil {
		t.Fatal("one device: no error")
	}
}
