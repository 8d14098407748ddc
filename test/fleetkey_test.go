package e2e

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestWrongFleetKeyGetsNothing: two nodes share fleet key K1; a third with
// K2 and a fourth with no key both --join and --bootstrap to the first. The
// keyed fleet never lists them, no libp2p connection forms, and an image
// pushed to the keyed fleet (no upstream anywhere) is pulled by tag through
// the second keyed node but not through either outsider.
func TestWrongFleetKeyGetsNothing(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	k1, k2 := fleetKeyFile(ctx, t), fleetKeyFile(ctx, t)
	a := startMeshNode(t, "keyed1", meshOptions{key: k1})
	b := startMeshNode(t, "keyed2", meshOptions{key: k1, join: []string{a.gossip}})
	keyed := []*meshNode{a, b}
	waitFleetSize(ctx, t, keyed, 2, 60*time.Second)
	st := a.status(ctx, t)
	if len(st.P2PAddrs) == 0 || !strings.Contains(st.P2PAddrs[0], "/p2p/"+st.PeerID) {
		t.Fatalf("keyed1 status: p2p_addrs %v do not name peer %s", st.P2PAddrs, st.PeerID)
	}
	toA := meshOptions{join: []string{a.gossip}, extra: []string{"--bootstrap", st.P2PAddrs[0]}}
	strangerOpts := toA
	strangerOpts.key = k2
	outsiders := []*meshNode{
		startMeshNode(t, "stranger", strangerOpts),
		startMeshNode(t, "nokey", toA),
	}
	stopTogether(t, append(slices.Clone(keyed), outsiders...)...)
	// The outsiders tried both doors and were turned away.
	for _, o := range outsiders {
		poll(t, o.name+" refused by the fleet", 30*time.Second, o.proc, func() error {
			log := o.proc.log(t)
			for _, msg := range []string{"gossip join failed", "bootstrap peer unreachable"} {
				if !strings.Contains(log, msg) {
					return fmt.Errorf("no %q in its log yet", msg)
				}
			}
			return nil
		})
	}

	// An image pushed to keyed1, pulled by tag through keyed2: no upstream.
	const repo, tag = "test/secret", "v1"
	img := hostImage(t, ociImage, 2, 256<<10)
	if err := remote.Write(ref(t, a.addr, repo+":"+tag), img, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push to keyed1: %v", err)
	}
	manifest, _ := rawManifest(t, img)
	manifestDigest := sha256Digest(manifest)
	blobs := layerBytes(t, img)
	pullOnceKnown(t, "keyed2 pulls by tag", 10*time.Second, func() error {
		return pullImage(ctx, b, repo, tag, "", manifest, manifestDigest, blobs)
	})
	if st := b.status(ctx, t); st.FetchedBytes["peer"] == 0 {
		t.Errorf("keyed2 fetched %v, want the blobs from keyed1", st.FetchedBytes)
	}

	for _, o := range outsiders {
		for _, r := range []string{tag, manifestDigest} {
			resp, err := o.pullManifest(ctx, repo, r, "")
			if err := notServed(o.name+" manifest "+r, resp, err, manifest); err != nil {
				t.Error(err)
			}
		}
		for d, content := range blobs {
			resp, err := o.pullBlob(ctx, repo, d, "")
			if err := notServed(o.name+" blob "+d, resp, err, content); err != nil {
				t.Error(err)
			}
		}
		if st := o.status(ctx, t); st.FleetSize != 1 || st.FetchedBytes["peer"] != 0 || st.StoreBlobs != 0 {
			t.Errorf("%s: fleet_size %d, fetched %v, %d blobs stored; want a fleet of 1 that got nothing", o.name, st.FleetSize, st.FetchedBytes, st.StoreBlobs)
		}
		if ps := o.peers(ctx, t); len(ps) != 1 || !ps[0].Self {
			t.Errorf("%s lists peers %+v, want only itself", o.name, ps)
		}
		if n := libp2pPeers(ctx, t, o); n != 0 {
			t.Errorf("%s has %v libp2p connections, want none", o.name, n)
		}
	}

	// The keyed fleet never saw them.
	for _, n := range keyed {
		var names []string
		for _, p := range n.peers(ctx, t) {
			names = append(names, p.Name)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"keyed1", "keyed2"}) {
			t.Errorf("%s lists the fleet %v, want [keyed1 keyed2]", n.name, names)
		}
		if st := n.status(ctx, t); st.FleetSize != 2 {
			t.Errorf("%s: fleet_size %d, want 2", n.name, st.FleetSize)
		}
		if got := libp2pPeers(ctx, t, n); got != 1 {
			t.Errorf("%s has %v libp2p connections, want 1 (its keyed peer)", n.name, got)
		}
	}

	// A client without the key on keyed1's data plane: refused, no bytes.
	for d, content := range blobs {
		r, err := do(ctx, httpClient(t), http.MethodGet, "http://"+a.dataAddr(t)+"/blobs/"+d, nil)
		if err != nil || r.status != http.StatusUnauthorized {
			t.Errorf("unauthenticated GET of %s on keyed1's data plane: status %d, err %v; want 401", d, r.status, err)
		}
		if err := notServed("keyed1 data plane "+d, r, err, content); err != nil {
			t.Error(err)
		}
	}

	// Nor does the keyed fleet take content from the stranger.
	layer, data := randomBlob(t, 64<<10)
	stranger := outsiders[0]
	if err := remote.WriteLayer(ref(t, stranger.addr, "test/planted:x").Context(), layer, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push to stranger: %v", err)
	}
	r, err := b.pullBlob(ctx, "test/planted", sha256Digest(data), "")
	if err := notServed("keyed2 blob held only by the stranger", r, err, data); err != nil {
		t.Error(err)
	}
}

// libp2pPeers is the node's count of open libp2p connections.
func libp2pPeers(ctx context.Context, t *testing.T, n *meshNode) float64 {
	t.Helper()
	samples := n.metrics(ctx, t, n.client)
	for _, s := range samples {
		if s.name == "imgmesh_peers" {
			return s.value
		}
	}
	t.Fatalf("%s exposes no imgmesh_peers; metrics: %v", n.name, names(samples))
	return 0
}
