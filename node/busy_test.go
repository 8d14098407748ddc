package node_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/node"
)

// TestBusy: a blob is busy while it downloads and while a client of the
// download still holds its reader; a local hit does not make it busy (an
// open file outlives a deletion), and nothing else is.
func TestBusy(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 2<<20)
	gate := make(chan struct{})
	o.mu.Lock()
	o.gate, o.gateAfter = gate, 1<<20
	o.mu.Unlock()
	n, _ := newNode(t, o)
	ctx := context.Background()
	ld, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	d := digest.Digest(ld.String())
	other := digest.FromString("other")
	if n.Busy(d) || n.Busy(other) {
		t.Fatal("busy before anything happened")
	}
	c, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, false)
	if err != nil {
		t.Fatal(err)
	}
	if !n.Busy(d) || n.Busy(other) {
		t.Errorf("during the download: Busy = %v (other %v), want true (false)", n.Busy(d), n.Busy(other))
	}
	close(gate)
	if _, err := io.Copy(io.Discard, c.Body); err != nil {
		t.Fatal(err)
	}
	if !n.Busy(d) {
		t.Error("not busy while a client holds the reader")
	}
	if err := c.Body.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n.Busy(d) { // the download goroutine ends just after the commit
		if time.Now().After(deadline) {
			t.Fatal("still busy after the download ended and the reader closed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	local, err := n.Blob(ctx, node.Name{NS: ns, Repo: "team/app"}, d, false)
	if err != nil || local.Source != "local" {
		t.Fatalf("second read: %+v, %v; want a local hit", local, err)
	}
	defer local.Body.Close()
	if n.Busy(d) {
		t.Error("a local hit made the blob busy")
	}
}
