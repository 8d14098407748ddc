package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// metricValue is the sum of a metric's series, -1 if absent.
func metricValue(samples []sample, name string) float64 {
	v, found := 0.0, false
	for _, s := range samples {
		if s.name == name {
			v += s.value
			found = true
		}
	}
	if !found {
		return -1
	}
	return v
}

// gcRuns returns the node's "evicted" log records.
func gcRuns(t *testing.T, n *imgmeshNode) []map[string]any {
	t.Helper()
	var out []map[string]any
	for line := range strings.SplitSeq(n.proc.log(t), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "disk quota: evicted least recently used content" {
			out = append(out, rec)
		}
	}
	return out
}

// TestQuotaEviction: a node with a small --max-disk pulls several images
// from a real registry. The least recently pulled unpinned images are
// evicted whole (`images ls` and the metrics show it), the pinned one stays
// complete and pullable with the upstream down, and a client still reading
// a large blob when the GC wants it gets every byte; the blob goes after.
func TestQuotaEviction(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	up := startUpstream(t)
	const mib = 1 << 20
	imgs := map[string]v1.Image{
		"pinned": hostImage(t, ociImage, 2, 3*mib/4),
		"a":      hostImage(t, ociImage, 1, mib),
		"b":      hostImage(t, ociImage, 1, mib),
		"c":      hostImage(t, ociImage, 1, mib),
		"large":  hostImage(t, ociImage, 1, 16*mib),
	}
	size := map[string]int64{}
	for name, img := range imgs {
		up.push(ctx, t, "quota/"+name+":v1", img)
		size[name] = imageSize(t, img)
	}
	// pinned+a+b fit under the high watermark (90%); with c they do not,
	// and evicting a alone leaves the store above the low one (80%).
	maxDisk := (size["pinned"] + size["a"] + size["b"]) * 100 / 89
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--max-disk", strconv.FormatInt(maxDisk, 10))
	node := n.url("")
	c := httpClient(t)
	ref := func(name string) string { return up.Host() + "/quota/" + name + ":v1" }

	pullThrough(ctx, t, n, c, "quota/pinned", "v1", imgs["pinned"])
	if r := imagesCLI(ctx, t, "images", "pin", ref("pinned"), "--node", node); r.code != 0 {
		t.Fatalf("pin: %s", r.stderr)
	}
	for _, name := range []string{"a", "b", "c"} {
		pullThrough(ctx, t, n, c, "quota/"+name, "v1", imgs[name])
	}
	wantStore := size["pinned"] + size["c"]
	poll(t, "eviction down to the low watermark", 15*time.Second, n.proc, func() error {
		if got := metricValue(n.metrics(ctx, t, c), "imgmesh_store_bytes"); got != float64(wantStore) {
			return fmt.Errorf("imgmesh_store_bytes %.0f, want %d (pinned + c)", got, wantStore)
		}
		return nil
	})
	m := n.metrics(ctx, t, c)
	if got, want := metricValue(m, "imgmesh_evicted_bytes_total"), float64(size["a"]+size["b"]); got != want {
		t.Errorf("imgmesh_evicted_bytes_total %.0f, want %.0f (images a and b whole)", got, want)
	}
	if got := metricValue(m, "imgmesh_evictions_total"); got != 6 {
		t.Errorf("imgmesh_evictions_total %.0f, want 6 (manifest, config and layer of a and b)", got)
	}
	if got := metricValue(m, "imgmesh_store_quota_bytes"); got != float64(maxDisk) {
		t.Errorf("imgmesh_store_quota_bytes %.0f, want %d", got, maxDisk)
	}
	rows := listImages(ctx, t, node)
	if len(rows) != 2 || !rows[ref("pinned")].Complete || !rows[ref("pinned")].Pinned || !rows[ref("c")].Complete {
		t.Errorf("images ls after eviction = %+v; want the pinned image and c, complete", rows)
	}

	// A client reads the first MiB of a 16 MiB blob and stops. Its download
	// commits; the GC wants the blob (it is all that is evictable) but
	// spares it while the client reads.
	large := layerDigest(t, imgs["large"])
	if r := n.getManifest(ctx, t, c, "quota/large", "v1"); r.status != http.StatusOK {
		t.Fatalf("large manifest: %d", r.status)
	}
	resp, err := c.Do(mustRequest(ctx, t, n.url("/v2/quota/large/blobs/"+large)))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET large blob: %v %v", resp, err)
	}
	defer resp.Body.Close()
	h := sha256.New()
	br := bufio.NewReader(resp.Body)
	if _, err := io.CopyN(h, br, mib); err != nil {
		t.Fatal(err)
	}
	poll(t, "a GC run that spared the busy blob", 20*time.Second, n.proc, func() error {
		for _, rec := range gcRuns(t, n) {
			if v, _ := rec["skipped_busy"].(float64); v >= 1 {
				return nil
			}
		}
		return fmt.Errorf("no eviction skipped a busy blob yet")
	})
	rest, err := io.Copy(h, br)
	if err != nil || mib+rest != imageBlobs(t, imgs["large"])[large] || "sha256:"+hex.EncodeToString(h.Sum(nil)) != large {
		t.Fatalf("large blob: %d bytes, %v; want %d bytes with digest %s", mib+rest, err, imageBlobs(t, imgs["large"])[large], large)
	}
	resp.Body.Close()
	// Read and closed: the next GC run evicts it (c went before it).
	poll(t, "eviction of the large image once read", 30*time.Second, n.proc, func() error {
		if got := metricValue(n.metrics(ctx, t, c), "imgmesh_store_bytes"); got != float64(size["pinned"]) {
			return fmt.Errorf("imgmesh_store_bytes %.0f, want %d (the pinned image only)", got, size["pinned"])
		}
		return nil
	})
	if rows := listImages(ctx, t, node); len(rows) != 1 || !rows[ref("pinned")].Complete {
		t.Errorf("images ls = %+v; want only the pinned image, complete", rows)
	}

	for _, rec := range gcRuns(t, n) {
		t.Logf("GC run: %v images, %v blobs, %.0f bytes (store %.0f -> %.0f, low %.0f), skipped busy %v, took %v",
			rec["images"], rec["blobs"], rec["bytes"], rec["before"], rec["after"], rec["low"], rec["skipped_busy"],
			time.Duration(int64(rec["duration"].(float64))))
	}

	// The pinned image is whole and served locally with the upstream down;
	// an evicted one is really gone.
	up.proxy.SetMode(modeDown503)
	pullThrough(ctx, t, n, c, "quota/pinned", "v1", imgs["pinned"])
	if r := n.getManifest(ctx, t, c, "quota/a", "v1"); r.status == http.StatusOK {
		t.Errorf("evicted image a still served with the upstream down")
	}
}

// layerDigest is the digest of img's only layer.
func layerDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("layers: %v (%d)", err, len(ls))
	}
	d, err := ls[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func mustRequest(ctx context.Context, t *testing.T, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
