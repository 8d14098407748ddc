package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const containerdConfig = `version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = %[3]q

[ttrpc]
  address = "%[3]s.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = %[4]q
`

// containerd is a containerd daemon with everything in a temp dir.
type containerd struct {
	sock string
}

// startContainerd runs Debian's containerd (CRI disabled) as a daemon.
func startContainerd(ctx context.Context, t *testing.T) *containerd {
	t.Helper()
	requireRoot(t)
	bin := requireTool(t, "containerd")
	requireTool(t, "ctr")
	// Unix socket paths are limited to 108 bytes: keep this one short.
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cd := &containerd{sock: filepath.Join(dir, "c.sock")}
	cfg := filepath.Join(dir, "config.toml")
	body := fmt.Sprintf(containerdConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"), cd.sock, filepath.Join(dir, "opt"))
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered after the RemoveAll above, so it runs first: the daemon
	// stops before its directory goes.
	p := startProc(t, "containerd", nil, bin, "--config", cfg)
	poll(t, "containerd", 30*time.Second, p, func() error {
		if _, err := os.Stat(cd.sock); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := run(cctx, t, "ctr", "--address", cd.sock, "version")
		return err
	})
	return cd
}

// ctr runs `ctr --address SOCK args...` and fails the test on error.
func (cd *containerd) ctr(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(ctx, t, append([]string{"ctr", "--address", cd.sock}, args...)...)
}

// imageDigest is the target digest `ctr images ls` shows for ref.
func (cd *containerd) imageDigest(ctx context.Context, t *testing.T, ref string) string {
	t.Helper()
	for _, line := range strings.Split(cd.ctr(ctx, t, "images", "ls"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls does not list %s", ref)
	return ""
}

// content lists the digests in containerd's content store.
func (cd *containerd) content(ctx context.Context, t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, d := range strings.Fields(cd.ctr(ctx, t, "content", "ls", "-q")) {
		out[d] = true
	}
	return out
}

// TestContainerdPull: containerd pulls through the node with the hosts.toml
// that `imgmesh config containerd` writes; every request goes through the
// node (with ?ns=), and a second pull after removing all content costs the
// upstream nothing.
func TestContainerdPull(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	cd := startContainerd(ctx, t)
	up := startUpstream(t)
	img := hostImage(t, dockerImage, 3, 512<<10)
	pushed := up.push(ctx, t, "test/app:v1", img)
	blobs := imageBlobs(t, img)

	// The decoy is the first upstream: a request without ?ns= would go there.
	decoy := newDeadRegistry(t)
	n := startNode(t, "",
		"--upstream", "decoy.invalid="+decoy.srv.URL,
		"--upstream", up.Host()+"=http://"+up.Host(),
		"--restrict-upstreams")

	hosts := t.TempDir()
	mustRun(ctx, t, imgmeshBin, "config", "containerd", "--dir", hosts, "--registry", up.Host(), "--node", "http://"+n.addr)
	toml, err := os.ReadFile(filepath.Join(hosts, up.Host(), "hosts.toml"))
	if err != nil {
		t.Fatalf("imgmesh config containerd wrote no hosts.toml: %v", err)
	}
	if !strings.Contains(string(toml), n.addr) {
		t.Fatalf("hosts.toml does not name the node %s:\n%s", n.addr, toml)
	}

	imageRef := up.Host() + "/test/app:v1"
	pull := func() {
		t.Helper()
		cd.ctr(ctx, t, "images", "pull", "--hosts-dir", hosts, "--plain-http", "--snapshotter", "native", imageRef)
		if got := cd.imageDigest(ctx, t, imageRef); got != pushed {
			t.Fatalf("containerd pulled %s as %s, pushed %s", imageRef, got, pushed)
		}
		have := cd.content(ctx, t)
		for d := range blobs {
			if !have[d] {
				t.Errorf("blob %s is not in containerd's content store after the pull", d)
			}
		}
	}

	pull()
	first := up.proxy.Stats()
	for ua := range first.Agents {
		if !strings.HasPrefix(strings.ToLower(ua), "imgmesh") {
			t.Errorf("upstream saw a request with User-Agent %q: containerd went around the node", ua)
		}
	}
	if hits := decoy.hits.Load(); hits != 0 {
		t.Errorf("the first (decoy) upstream got %d requests: ?ns= did not reach the node", hits)
	}
	for d, size := range blobs {
		if first.BlobGets[d] != 1 || first.BlobBytes[d] != size {
			t.Errorf("first pull: upstream served blob %s %d times, %d bytes (size %d), want once", d, first.BlobGets[d], first.BlobBytes[d], size)
		}
	}

	// Forget the image: containerd must fetch every blob again.
	cd.ctr(ctx, t, "images", "rm", "--sync", imageRef)
	if left := cd.content(ctx, t); len(left) > 0 {
		args := []string{"content", "rm"}
		for d := range left {
			args = append(args, d)
		}
		cd.ctr(ctx, t, args...)
	}
	if left := cd.content(ctx, t); len(left) > 0 {
		t.Fatalf("content store not empty after removal: %v", left)
	}
	if snaps := strings.Fields(cd.ctr(ctx, t, "snapshots", "--snapshotter", "native", "ls")); len(snaps) > 3 {
		t.Fatalf("unpacked layers left after removal (a pull would skip fetching them): %v", snaps[3:])
	}

	c := httpClient(t)
	servedBefore := n.metrics(ctx, t, c)
	pull()
	second := up.proxy.Stats()
	if got := second.TotalBlobBytes() - first.TotalBlobBytes(); got != 0 {
		t.Errorf("second pull cost the upstream %d blob bytes, want 0", got)
	}
	if got := second.TotalBlobGets() - first.TotalBlobGets(); got != 0 {
		t.Errorf("second pull made %d blob GETs upstream, want 0", got)
	}
	for ua := range second.Agents {
		if !strings.HasPrefix(strings.ToLower(ua), "imgmesh") {
			t.Errorf("upstream saw User-Agent %q on the second pull", ua)
		}
	}
	servedAfter := n.metrics(ctx, t, c)
	t.Logf("first pull: upstream %d requests, %d blob bytes; second pull: %d more requests, %d more blob bytes",
		first.Requests, first.TotalBlobBytes(), second.Requests-first.Requests, second.TotalBlobBytes()-first.TotalBlobBytes())
	checkServedLocally(t, servedBefore, servedAfter, blobs)
}

// checkServedLocally asserts from the node's metrics that the second pull's
// blobs were served from the node's own store.
func checkServedLocally(t *testing.T, before, after []sample, blobs map[string]int64) {
	t.Helper()
	var want int64
	for _, size := range blobs {
		want += size
	}
	got := sum(after, metricBytesServed, map[string]string{"source": "local"}) -
		sum(before, metricBytesServed, map[string]string{"source": "local"})
	reqs := sum(after, metricRequests, map[string]string{"method": "GET", "code": "200"}) -
		sum(before, metricRequests, map[string]string{"method": "GET", "code": "200"})
	// The second pull GETs at least the manifest and every blob; the two
	// scrapes of /metrics add one more.
	if reqs < float64(len(blobs)+1) {
		t.Errorf("node metric %s{method=GET,code=200} grew by %.0f during the second pull, want >= %d", metricRequests, reqs, len(blobs)+1)
	}
	if got < float64(want) {
		t.Errorf("node metric %s{source=local} grew by %.0f during the second pull, want >= %d (metrics: %v)",
			metricBytesServed, got, want, names(after))
	}
}
