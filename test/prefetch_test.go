package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// prefetchReport is one member's report in GET /api/v1/prefetch/{id}.
type prefetchReport struct {
	State   string   `json:"state"`
	Done    int64    `json:"done"`
	Total   int64    `json:"total"`
	Error   string   `json:"error"`
	Digests []string `json:"digests"`
}

// prefetchStatus is GET /api/v1/prefetch/{id} as the wire carries it.
type prefetchStatus struct {
	Order struct {
		ID   string   `json:"id"`
		Refs []string `json:"refs"`
	} `json:"order"`
	Members []struct {
		Name   string          `json:"name"`
		Report *prefetchReport `json:"report"`
	} `json:"members"`
}

func (s prefetchStatus) report(member string) *prefetchReport {
	for _, m := range s.Members {
		if m.Name == member {
			return m.Report
		}
	}
	return nil
}

var orderLine = regexp.MustCompile(`(?m)^order ([0-9a-f]+):`)

// prefetchCLI runs `imgmesh prefetch` against node n and returns its output,
// the order ID it printed, and its error (non-nil on a non-zero exit).
func prefetchCLI(ctx context.Context, t *testing.T, n *meshNode, args ...string) (string, string, error) {
	t.Helper()
	start := time.Now()
	out, err := run(ctx, t, append([]string{imgmeshBin, "prefetch", "--node", n.url("")}, args...)...)
	t.Logf("imgmesh prefetch %s (%s):\n%s", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), out)
	m := orderLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("imgmesh prefetch printed no order ID: %v\n%s", err, out)
	}
	return out, m[1], err
}

// pinnedRow is the part of GET /api/v1/images this test reads.
type pinnedRow struct {
	Digest string `json:"digest"`
	Pinned bool   `json:"pinned"`
}

// TestPrefetchRollsOutToFleet: `imgmesh prefetch` through node 1 puts a
// whole image in the store of every member of a 4-node fleet, pinned; a
// node that joins after the order still gets it; with the upstream down
// and every other node frozen, each node serves the image from its own
// disk. A reference nobody has fails with a per-device table.
func TestPrefetchRollsOutToFleet(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 4*time.Minute)
	up := startUpstream(t)
	const repo, tag = "test/rollout", "v1"
	img := hostImage(t, ociImage, 3, 512<<10)
	manifestDigest := up.push(ctx, t, repo+":"+tag, img)
	manifest, _ := rawManifest(t, img)
	blobs := layerBytes(t, img)
	var blobTotal int64
	for _, b := range blobs {
		blobTotal += int64(len(b))
	}
	ns := up.Host()
	opts := meshOptions{upstream: []string{"--upstream", ns + "=" + up.URL(), "--restrict-upstreams"}}
	nodes := startFleet(t, 4, opts)
	waitFleetSize(ctx, t, nodes, 4, 60*time.Second)

	ref := ns + "/" + repo + ":" + tag
	out, id, err := prefetchCLI(ctx, t, nodes[0], ref, "--timeout", "2m")
	if err != nil {
		t.Fatalf("prefetch to 4 nodes: %v", err)
	}
	if !strings.Contains(out, "all 4 device(s) complete") {
		t.Errorf("prefetch output does not say all 4 devices completed:\n%s", out)
	}
	// node4 hears every report by gossip, a moment after node1 may have:
	// wait for its view to agree (a final report that missed its gossip
	// comes with the next push/pull sync, within 30 s).
	var st prefetchStatus
	for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if err := nodes[3].getJSON(ctx, "/api/v1/prefetch/"+id, &st); err != nil {
			t.Fatal(err)
		}
		all := true
		for _, n := range nodes {
			r := st.report(n.name)
			all = all && r != nil && r.State == "complete"
		}
		if all || time.Now().After(deadline) {
			break
		}
	}
	for _, n := range nodes {
		r := st.report(n.name)
		if r == nil || r.State != "complete" || r.Done != blobTotal || r.Total != blobTotal || len(r.Digests) != 1 || r.Digests[0] != manifestDigest {
			t.Errorf("node4's view of %s: %+v, want complete with %d bytes of %s", n.name, r, blobTotal, manifestDigest)
		}
		checkPinned(ctx, t, n, manifestDigest)
	}
	t.Logf("upstream served %d blob bytes for a %d-byte image to 4 nodes", up.proxy.Stats().TotalBlobBytes(), blobTotal)

	// A reference nobody has: every device fails, the command says which and why.
	out, _, err = prefetchCLI(ctx, t, nodes[1], ns+"/"+repo+":no-such-tag", "--timeout", "20s")
	if err == nil {
		t.Fatal("prefetch of a missing tag exited 0")
	}
	table := out[strings.Index(out, "DEVICE"):]
	for _, n := range nodes {
		if !regexp.MustCompile(`(?m)^` + n.name + ` +failed .*not found`).MatchString(table) {
			t.Errorf("the failure table has no failed line for %s saying not found:\n%s", n.name, table)
		}
	}

	// A node that joins after the order was issued gets it by gossip.
	late := startMeshNode(t, "node5", meshOptions{upstream: opts.upstream, join: []string{nodes[0].gossip}})
	stopTogether(t, late)
	poll(t, "node5 completes the order it joined after", 60*time.Second, late.proc, func() error {
		var st prefetchStatus
		if err := nodes[0].getJSON(ctx, "/api/v1/prefetch/"+id, &st); err != nil {
			return err
		}
		if r := st.report("node5"); r == nil || r.State != "complete" {
			return fmt.Errorf("node5 report %+v", r)
		}
		return nil
	})

	// Upstream down, every other node frozen: each node alone serves the
	// image, from its own disk.
	up.proxy.SetMode(modeDownClose)
	all := slices.Concat(nodes, []*meshNode{late})
	for i, n := range all {
		for j, o := range all {
			if j != i {
				o.freeze(t)
			}
		}
		before := n.status(ctx, t)
		err := pullImage(ctx, n, repo, tag, ns, manifest, manifestDigest, blobs)
		after := n.status(ctx, t)
		for j, o := range all {
			if j != i {
				o.thaw(t)
			}
		}
		if err != nil {
			t.Errorf("%s alone, upstream down: %v", n.name, err)
			continue
		}
		if got := after.ServedBytes["local"] - before.ServedBytes["local"]; got != float64(blobTotal) {
			t.Errorf("%s served %v bytes from its own store, want all %d", n.name, got, blobTotal)
		}
		if !maps.Equal(after.FetchedBytes, before.FetchedBytes) {
			t.Errorf("%s fetched bytes while alone: %v, then %v", n.name, before.FetchedBytes, after.FetchedBytes)
		}
	}
}

// checkPinned asks the node's image list whether d is pinned.
func checkPinned(ctx context.Context, t *testing.T, n *meshNode, d string) {
	t.Helper()
	r, err := do(ctx, n.client, http.MethodGet, n.url("/api/v1/images"), nil)
	if err != nil || r.status != http.StatusOK {
		t.Errorf("%s GET /api/v1/images: %v %d", n.name, err, r.status)
		return
	}
	var rows []pinnedRow
	if err := json.Unmarshal(r.body, &rows); err != nil {
		t.Errorf("%s GET /api/v1/images: %v", n.name, err)
		return
	}
	for _, row := range rows {
		if row.Digest == d {
			if !row.Pinned {
				t.Errorf("%s holds the prefetched image %s unpinned", n.name, d)
			}
			return
		}
	}
	t.Errorf("%s does not list the prefetched image %s: %s", n.name, d, r.body)
}

// TestPrefetchMeasure measures a rollout of a ~200 MB image (4 layers) to
// 4 nodes on loopback. It runs only with IMGMESH_PREFETCH_MEASURE=1 (not in
// make test): IMGMESH_PREFETCH_MEASURE=1 go test -count=1 -run TestPrefetchMeasure -v ./test/
func TestPrefetchMeasure(t *testing.T) {
	if os.Getenv("IMGMESH_PREFETCH_MEASURE") != "1" {
		t.Skip("set IMGMESH_PREFETCH_MEASURE=1 to measure a 200 MB rollout")
	}
	ctx := testContext(t, 10*time.Minute)
	up := startUpstream(t)
	const repo, tag = "test/big", "v1"
	img := hostImage(t, ociImage, 4, 50<<20)
	up.push(ctx, t, repo+":"+tag, img)
	var total int64
	for _, b := range layerBytes(t, img) {
		total += int64(len(b))
	}
	ns := up.Host()
	nodes := startFleet(t, 4, meshOptions{upstream: []string{"--upstream", ns + "=" + up.URL(), "--restrict-upstreams"},
		extra: []string{"--log-level", "info"}})
	waitFleetSize(ctx, t, nodes, 4, 60*time.Second)
	start := time.Now()
	if _, _, err := prefetchCLI(ctx, t, nodes[0], ns+"/"+repo+":"+tag, "--timeout", "9m"); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("MEASURED: prefetch of a %.1f MB image (4 layers) to 4 loopback nodes: %s (%.0f MB/s of image per node, %.0f MB/s stored fleet-wide); upstream sent %.1f MB",
		float64(total)/1e6, d.Round(time.Millisecond), float64(total)/1e6/d.Seconds(), 4*float64(total)/1e6/d.Seconds(),
		float64(up.proxy.Stats().TotalBlobBytes())/1e6)
}
