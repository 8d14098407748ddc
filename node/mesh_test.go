package node_test

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/upstream"
)

func TestFleetFetchesFromHolders(t *testing.T) {
	o := newOrigin(t)
	img, layers := pushImage(t, o, "team/app", "v1", 2<<20, 3000)
	fleet := newFleet(t, o, 4)
	ctx := context.Background()
	name := node.Name{NS: ns, Repo: "team/app"}
	want, _ := img.Digest()

	if _, err := fleet[0].n.Manifest(ctx, name, "v1", false); err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if _, _, err := readBlob(ctx, fleet[0].n, "team/app", digest.Digest(d.String())); err != nil {
			t.Fatal(err)
		}
	}
	// No waiting: a pull that finished means the fleet can find the content.
	o.down.Store(true) // from now on only the fleet has the image
	for i, m := range fleet[1:] {
		man, err := m.n.Manifest(ctx, name, digest.Digest(want.String()).String(), false)
		if err != nil {
			t.Fatalf("node %d manifest by digest from the fleet: %v", i+1, err)
		}
		if man.Digest.String() != want.String() {
			t.Fatalf("node %d got manifest %s", i+1, man.Digest)
		}
		for _, l := range layers {
			d, _ := l.Digest()
			got, c, err := readBlob(ctx, m.n, "team/app", digest.Digest(d.String()))
			if err != nil {
				t.Fatalf("node %d blob %s: %v", i+1, d, err)
			}
			if c.Source != "peer" || !bytes.Equal(got, layerBytes(t, l)) {
				t.Fatalf("node %d blob %s: source %s, correct bytes %v", i+1, d, c.Source, bytes.Equal(got, layerBytes(t, l)))
			}
		}
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if g := o.gets(d); g != 1 {
			t.Errorf("upstream served %s %d times to a fleet of 4, want once", d, g)
		}
	}
}

func TestHolderDiesMidTransferResumes(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 4<<20)
	fleet := newFleet(t, o, 2)
	ctx := context.Background()
	name := node.Name{NS: ns, Repo: "team/app"}
	d, _ := layers[0].Digest()
	dd := digest.Digest(d.String())
	if _, _, err := readBlob(ctx, fleet[0].n, "team/app", dd); err != nil {
		t.Fatal(err)
	}
	waitAdvertised(t, fleet[1].n, name, dd)
	// The holder dies once it sent 2.5 MiB: two whole pieces (asked two at
	// a time), then half of the next ones.
	fleet[0].cut.Store(5 << 19)

	got, _, err := readBlob(ctx, fleet[1].n, "team/app", dd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, layerBytes(t, layers[0])) {
		t.Fatal("wrong bytes after the holder died mid-transfer")
	}
	if g := o.gets(d); g < 2 {
		t.Fatalf("upstream GETs = %d: the rest did not come from upstream", g)
	}
	// Every byte came once: the pieces the holder sent before it died from
	// it, the rest from upstream.
	peer, up := fleet[1].fetched(t, "peer"), fleet[1].fetched(t, "upstream")
	if peer < 2<<20 || peer+up != 4<<20 {
		t.Fatalf("fetched %.0f bytes from the holder and %.0f from upstream, want at least 2 MiB from the holder and 4 MiB in all", peer, up)
	}
}

func TestTagPushedToOneNodeResolvesOnAnother(t *testing.T) {
	fleet := newFleet(t, nil, 2) // no upstream anywhere
	ctx := context.Background()
	a := fleet[0].store
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}`)
	d := digest.FromBytes(body)
	w, _ := a.NewWriter(ctx)
	w.Write(body)
	if _, err := w.Commit(ctx, int64(len(body)), d); err != nil {
		t.Fatal(err)
	}
	rec, _ := blobstore.ParseManifest(body, "", d)
	if err := a.PutManifest(ctx, "ci/app", rec); err != nil {
		t.Fatal(err)
	}
	if err := a.Tag(ctx, "ci/app", "release", d); err != nil {
		t.Fatal(err)
	}

	name := node.Name{Repo: "ci/app"}
	deadline := time.Now().Add(5 * time.Second)
	var m node.Manifest
	var err error
	for time.Now().Before(deadline) {
		if m, err = fleet[1].n.Manifest(ctx, name, "release", false); err == nil {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("tag pushed to node A not resolvable on node B: %v", err)
	}
	if m.Digest != d || !bytes.Equal(m.Body, body) {
		t.Fatalf("node B resolved release to %s", m.Digest)
	}
}

func TestDeadAndSilentHoldersFallBackToUpstream(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 1<<20)
	d, _ := layers[0].Digest()
	dd := digest.Digest(d.String())

	silent, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never answers
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadURL := "http://" + dead.Addr().String()
	dead.Close() // refuses

	mesh := p2p.NewMemoryNetwork()
	ctx := context.Background()
	for i, url := range []string{deadURL, "http://" + silent.Addr().String()} {
		r := mesh.NewRouter(string(rune('x'+i)), url)
		if err := r.Advertise(ctx, dd.String()); err != nil {
			t.Fatal(err)
		}
	}
	store := blobstore.NewMemory()
	up, _ := upstream.New(upstream.Options{Registries: []upstream.Registry{{Name: ns, URL: o.srv.URL}}, Restrict: true})
	n := node.New(node.Options{Store: store, Upstream: up, Router: mesh.NewRouter("me", ""),
		Peers: dataplane.NewClient(dataplane.ClientOptions{}), UpstreamHedgeDelay: 100 * time.Millisecond})
	defer n.Close()

	got, c, err := readBlob(ctx, n, "team/app", dd)
	if err != nil {
		t.Fatal(err)
	}
	if c.Source != "upstream" || !bytes.Equal(got, layerBytes(t, layers[0])) {
		t.Fatalf("source %s", c.Source)
	}
}

func TestCorruptingPeerIsDroppedAndItsPiecesFetchedElsewhere(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 3<<20+5)
	d, _ := layers[0].Digest()
	dd := digest.Digest(d.String())
	want := layerBytes(t, layers[0])
	ctx := context.Background()

	t.Run("a good holder has them", func(t *testing.T) {
		fleet := newFleet(t, o, 3)
		for _, m := range fleet[:2] {
			if _, _, err := readBlob(ctx, m.n, "team/app", dd); err != nil {
				t.Fatal(err)
			}
		}
		gets := o.gets(d)
		fleet[0].corrupt.Store(true) // a lying peer: every piece it sends is wrong
		got, c, err := readBlob(ctx, fleet[2].n, "team/app", dd)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("pull next to a corrupting peer: %v, correct bytes %v", err, bytes.Equal(got, want))
		}
		if c.Source != "peer" || o.gets(d) != gets {
			t.Fatalf("source %s, upstream GETs %d -> %d: want every piece from the good holder", c.Source, gets, o.gets(d))
		}
	})
	t.Run("only upstream has them", func(t *testing.T) {
		fleet := newFleet(t, o, 2)
		if _, _, err := readBlob(ctx, fleet[0].n, "team/app", dd); err != nil {
			t.Fatal(err)
		}
		waitAdvertised(t, fleet[1].n, node.Name{NS: ns, Repo: "team/app"}, dd)
		fleet[0].corrupt.Store(true)
		got, _, err := readBlob(ctx, fleet[1].n, "team/app", dd)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("pull from a corrupting peer: %v, correct bytes %v", err, bytes.Equal(got, want))
		}
		waitStored(t, fleet[1].store, dd)
	})
}

// TestFleetFetchesAnEmptyBlob: a 0-byte blob (no pieces) comes from
// upstream through a fleet node, then from that node with upstream down.
func TestFleetFetchesAnEmptyBlob(t *testing.T) {
	o := newOrigin(t)
	_, layers := pushImage(t, o, "team/app", "v1", 0)
	h, _ := layers[0].Digest()
	d := digest.Digest(h.String())
	fleet := newRankedFleet(t, o, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for i, m := range fleet {
		got, _, err := readBlob(ctx, m.n, "team/app", d)
		if err != nil || len(got) != 0 {
			t.Fatalf("node %d: %d bytes, %v; want the empty blob", i, len(got), err)
		}
		waitStored(t, m.store, d)
		o.down.Store(true) // the second node has only the first
	}
}
