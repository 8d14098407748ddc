package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestHolderKilledMidTransfer: a node pulling a large blob from the fleet,
// with the upstream down, loses a holder mid-transfer (SIGKILL). The pull
// completes with the right bytes from the holders left, and nothing is
// fetched twice.
func TestHolderKilledMidTransfer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	up := startUpstream(t)
	const repo, size = "test/big", 32 << 20
	layer, data := randomBlob(t, size)
	up.pushBlob(ctx, t, repo, layer)
	d := sha256Digest(data)
	ns := up.Host()

	// 16 MB/s per node: a pull of the blob takes about 2 s, time enough to
	// kill a holder halfway.
	nodes := startFleet(t, 4, meshOptions{
		upstream: []string{"--upstream", ns + "=" + up.URL(), "--restrict-upstreams"},
		extra:    []string{"--max-download-rate", "16MB/s"},
	})
	waitFleetSize(ctx, t, nodes, 4, 60*time.Second)
	blobURL := func(n *meshNode) string { return n.url("/v2/" + repo + "/blobs/" + d + nsQuery(ns)) }
	a, b := nodes[0], nodes[1]
	for _, n := range []*meshNode{a, b} {
		if r := getHashed(ctx, n.client, blobURL(n)); r.err != nil || r.status != http.StatusOK || r.digest != d || r.size != size {
			t.Fatalf("pull through %s: status %d, %d bytes, digest %s, err %v", n.name, r.status, r.size, r.digest, r.err)
		}
	}
	// The puller is a node that holds nothing yet (one of the others may
	// have fetched the blob from upstream for the fleet).
	var puller *meshNode
	for _, n := range nodes[2:] {
		if n.status(ctx, t).StoreBlobs == 0 {
			puller = n
			break
		}
	}
	if puller == nil {
		t.Fatal("both other nodes hold the blob already")
	}
	up.proxy.SetMode(modeDown503) // from now on only the fleet has the blob

	done := make(chan hashed, 1)
	go func() { done <- getHashed(ctx, puller.client, blobURL(puller)) }()
	deadline := time.Now().Add(60 * time.Second)
	for puller.status(ctx, t).FetchedBytes["peer"] < size/4 {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not receive a quarter of the blob from peers within 60s", puller.name)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.kill(t)

	r := <-done
	if r.err != nil || r.status != http.StatusOK || r.digest != d || r.size != size {
		t.Fatalf("pull through %s after a holder died: status %d, %d bytes, digest %s, err %v", puller.name, r.status, r.size, r.digest, r.err)
	}
	st := puller.status(ctx, t)
	if st.FetchedBytes["peer"] != size || st.FetchedBytes["upstream"] != 0 {
		t.Errorf("%s fetched %v, want exactly the blob's %d bytes, all from peers (nothing fetched twice)", puller.name, st.FetchedBytes, size)
	}
}
