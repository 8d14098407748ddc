package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestFleetOfFive: five nodes on loopback, four joined to the first by
// gossip only. An image pulled through node 1 from the upstream is then
// pulled through nodes 2..5 at once: every blob crossed the uplink exactly
// once, the others came from peers. With the upstream down, every node
// still serves the image by tag and by digest.
func TestFleetOfFive(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	up := startUpstream(t)
	const repo, tag = "test/fleet", "v1"
	img := hostImage(t, ociImage, 3, 1<<20)
	manifestDigest := up.push(ctx, t, repo+":"+tag, img)
	manifest, _ := rawManifest(t, img)
	blobs := layerBytes(t, img)
	var blobTotal int64
	for _, b := range blobs {
		blobTotal += int64(len(b))
	}
	ns := up.Host()

	start := time.Now()
	// See TestSwarmColdRollout for the lookup budget.
	nodes := startFleet(t, 5, meshOptions{
		upstream: []string{"--upstream", ns + "=" + up.URL(), "--restrict-upstreams"},
		extra:    []string{"--lookup-timeout", "3s"},
	})
	waitFleetSize(ctx, t, nodes, 5, 60*time.Second)
	t.Logf("fleet of 5 formed in %s", time.Since(start).Round(time.Millisecond))
	for _, n := range nodes {
		if ps := n.peers(ctx, t); len(ps) != 5 {
			t.Errorf("%s lists %d peers, want 5: %+v", n.name, len(ps), ps)
		}
	}

	// Node 1, as a mirror client does it: by tag, no ?ns=.
	start = time.Now()
	if err := pullImage(ctx, nodes[0], repo, tag, "", manifest, manifestDigest, blobs); err != nil {
		t.Fatalf("pull through node1: %v", err)
	}
	t.Logf("node1 pulled the image from upstream in %s", time.Since(start).Round(time.Millisecond))

	// Nodes 2..5 at once, as containerd asks a mirror: ?ns=<registry>.
	start = time.Now()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes[1:] {
		wg.Go(func() { errs[i+1] = pullImage(ctx, n, repo, tag, ns, manifest, manifestDigest, blobs) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("nodes 2..5 pulled %d blobs (%d bytes in all) each in %s", len(blobs), blobTotal, time.Since(start).Round(time.Millisecond))
	if t.Failed() {
		t.FailNow()
	}

	// The uplink carried each blob once, to node 1.
	s := up.proxy.Stats()
	for d, b := range blobs {
		if s.BlobGets[d] != 1 || s.BlobBytes[d] != int64(len(b)) {
			t.Errorf("upstream served blob %s %d times (%d bytes), want once (%d bytes)", d, s.BlobGets[d], s.BlobBytes[d], len(b))
		}
	}
	// Node 1's pull went upstream through the member ranked first for each
	// blob (rendezvous hashing), which may be node 1 itself; everything
	// after it came from peers.
	var fromUpstream float64
	for i, n := range nodes {
		st := n.status(ctx, t)
		fromUpstream += st.FetchedBytes["upstream"]
		if got := st.FetchedBytes["peer"] + st.FetchedBytes["upstream"]; got < float64(blobTotal) {
			t.Errorf("%s fetched %v, want the image's %d blob bytes", n.name, st.FetchedBytes, blobTotal)
		}
		if i > 0 && st.ServedBytes["upstream"] != 0 {
			t.Errorf("%s served %v to its client, want nothing that came from upstream", n.name, st.ServedBytes)
		}
		if st.StoreBlobs < int64(len(blobs)) {
			t.Errorf("%s stores %d blobs, want at least the image's %d", n.name, st.StoreBlobs, len(blobs))
		}
	}
	if fromUpstream != float64(blobTotal) {
		t.Errorf("the fleet fetched %.0f bytes from upstream, want the image's %d once", fromUpstream, blobTotal)
	}

	// The uplink goes down: each node serves the image from its own store,
	// the tag from its local index.
	up.proxy.SetMode(modeDownClose)
	before := up.proxy.Stats()
	start = time.Now()
	for _, n := range nodes {
		for _, ref := range []string{tag, manifestDigest} {
			if err := pullImage(ctx, n, repo, ref, ns, manifest, manifestDigest, blobs); err != nil {
				t.Errorf("upstream down: %v", err)
			}
		}
		if err := pullImage(ctx, n, repo, tag, "", manifest, manifestDigest, blobs); err != nil {
			t.Errorf("upstream down, no ?ns=: %v", err)
		}
	}
	t.Logf("upstream down: 5 nodes served the image by tag and digest in %s", time.Since(start).Round(time.Millisecond))
	if after := up.proxy.Stats(); after.TotalBlobGets() != before.TotalBlobGets() {
		t.Errorf("with every blob in the fleet, nodes asked the dead upstream for blobs %d times", after.TotalBlobGets()-before.TotalBlobGets())
	}
}

// pullImage pulls repo:ref's manifest and every blob through n and checks
// each byte.
func pullImage(ctx context.Context, n *meshNode, repo, ref, ns string, manifest []byte, manifestDigest string, blobs map[string][]byte) error {
	r, err := n.pullManifest(ctx, repo, ref, ns)
	if err := checkPull(fmt.Sprintf("%s manifest %s:%s", n.name, repo, ref), r, err, manifest, manifestDigest); err != nil {
		return err
	}
	if got := r.header.Get("Docker-Content-Digest"); got != manifestDigest {
		return fmt.Errorf("%s manifest %s:%s: Docker-Content-Digest %q, want %s", n.name, repo, ref, got, manifestDigest)
	}
	ds := make([]string, 0, len(blobs))
	for d := range blobs {
		ds = append(ds, d)
	}
	sort.Strings(ds)
	for _, d := range ds {
		r, err := n.pullBlob(ctx, repo, d, ns)
		if err := checkPull(fmt.Sprintf("%s blob %s", n.name, d), r, err, blobs[d], d); err != nil {
			return err
		}
	}
	return nil
}

// notServed is nil when r is an answer that carried none of the content:
// an error status and a body that is not it.
func notServed(what string, r response, err error, content []byte) error {
	switch {
	case err != nil:
		return fmt.Errorf("%s: no answer: %w", what, err)
	case r.status == http.StatusOK:
		return fmt.Errorf("%s: 200 (%d bytes), want an error", what, len(r.body))
	case len(content) > 0 && len(r.body) >= len(content) && sha256Digest(r.body[:len(content)]) == sha256Digest(content):
		return fmt.Errorf("%s: status %d, but the body carries the content", what, r.status)
	}
	return nil
}

// TestFleetServesPushAtOnce: a blob, or an image by tag, pushed to one
// node (no upstream anywhere) can be pulled through another as soon as the
// push returned, as a script doing `crane push A; crane pull B` expects.
func TestFleetServesPushAtOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	nodes := startFleet(t, 3, meshOptions{})
	waitFleetSize(ctx, t, nodes, 3, 60*time.Second)
	const rounds, repo = 15, "test/fresh"
	var missed []error
	for i := range rounds {
		other := nodes[1+i%2]
		layer, data := randomBlob(t, 64<<10)
		if err := remote.WriteLayer(ref(t, nodes[0].addr, repo+":x").Context(), layer, remote.WithContext(ctx)); err != nil {
			t.Fatalf("push blob to node1: %v", err)
		}
		r, err := other.pullBlob(ctx, repo, sha256Digest(data), "")
		if err := checkPull(other.name+" blob", r, err, data, sha256Digest(data)); err != nil {
			missed = append(missed, err)
		}

		img := hostImage(t, ociImage, 1, 16<<10)
		tag := fmt.Sprintf("r%d", i)
		if err := remote.Write(ref(t, nodes[0].addr, repo+":"+tag), img, remote.WithContext(ctx)); err != nil {
			t.Fatalf("push image to node1: %v", err)
		}
		manifest, _ := rawManifest(t, img)
		if err := pullImage(ctx, other, repo, tag, "", manifest, sha256Digest(manifest), layerBytes(t, img)); err != nil {
			missed = append(missed, err)
		}
	}
	if len(missed) > 0 {
		t.Errorf("%d of %d pulls through another node right after the push to node1 failed:\n%v", len(missed), 2*rounds, errors.Join(missed...))
	}
}
