package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// cliResult is one run of the imgmesh CLI.
type cliResult struct {
	stdout, stderr string
	code           int
}

// imagesCLI runs the CLI once (not a server) and returns what it printed.
func imagesCLI(ctx context.Context, t *testing.T, args ...string) cliResult {
	t.Helper()
	cmd := exec.CommandContext(ctx, imgmeshBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("imgmesh %v: %v", args, err)
	}
	return res
}

// wantCLIError fails unless r failed with exit 1 and one stderr line
// holding want.
func wantCLIError(t *testing.T, what string, r cliResult, want string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 1 || len(lines) != 1 || !strings.Contains(r.stderr, want) {
		t.Errorf("%s: exit %d, stderr %q; want exit 1 and one line with %q", what, r.code, r.stderr, want)
	}
}

// imageRow is one entry of `images ls -o json`.
type imageRow struct {
	Ref       string   `json:"ref"`
	Digest    string   `json:"digest"`
	Platforms []string `json:"platforms"`
	Size      int64    `json:"size"`
	Present   int64    `json:"present"`
	Complete  bool     `json:"complete"`
	Pinned    bool     `json:"pinned"`
	Blobs     []struct {
		Digest  string `json:"digest"`
		Present bool   `json:"present"`
	} `json:"blobs"`
}

// listImages runs `images ls -o json` against node.
func listImages(ctx context.Context, t *testing.T, node string) map[string]imageRow {
	t.Helper()
	r := imagesCLI(ctx, t, "images", "ls", "--node", node, "-o", "json")
	if r.code != 0 {
		t.Fatalf("images ls: exit %d: %s", r.code, r.stderr)
	}
	var rows []imageRow
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("images ls -o json: %v: %s", err, r.stdout)
	}
	out := map[string]imageRow{}
	for _, row := range rows {
		out[row.Ref] = row
	}
	return out
}

// pullThrough pulls img's manifest by ref and every blob through the node,
// checking the bytes.
func pullThrough(ctx context.Context, t *testing.T, n *imgmeshNode, c *http.Client, repo, ref string, img v1.Image) {
	t.Helper()
	raw, _ := rawManifest(t, img)
	if r := n.getManifest(ctx, t, c, repo, ref); r.status != http.StatusOK || !bytes.Equal(r.body, raw) {
		t.Fatalf("manifest %s:%s: status %d, %d bytes; want %d: %.200s", repo, ref, r.status, len(r.body), len(raw), r.body)
	}
	for d, b := range layerBytes(t, img) {
		if r := n.getBlob(ctx, t, c, repo, d); r.status != http.StatusOK || r.readErr != nil || !bytes.Equal(r.body, b) {
			t.Fatalf("blob %s: status %d, %d of %d bytes, %v", d, r.status, len(r.body), len(b), r.readErr)
		}
	}
}

// imageSize is the bytes of img's manifest, config and layers.
func imageSize(t *testing.T, img v1.Image) int64 {
	t.Helper()
	raw, _ := rawManifest(t, img)
	n := int64(len(raw))
	for _, s := range imageBlobs(t, img) {
		n += s
	}
	return n
}

// TestImagesCLI: ls, inspect, pin, unpin, missing and rm against a real
// node that pulled from a real registry, with references as users type
// them; errors are one line with exit 1.
func TestImagesCLI(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	up := startUpstream(t)
	app := hostImage(t, ociImage, 2, 200<<10)
	appDigest := up.push(ctx, t, "team/app:v1", app)
	ma := multiArchIndex(t)
	idxDigest := up.pushIndex(ctx, t, "team/multi:v2", ma)
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL())
	node := n.url("")
	c := httpClient(t)

	pullThrough(ctx, t, n, c, "team/app", "v1", app)
	// The multi-platform image: the index and its amd64 platform only.
	if r := n.getManifest(ctx, t, c, "team/multi", "v2"); r.status != http.StatusOK {
		t.Fatalf("index: %d", r.status)
	}
	amdDigest, _ := ma.images[0].Digest()
	pullThrough(ctx, t, n, c, "team/multi", amdDigest.String(), ma.images[0])

	appRef := up.Host() + "/team/app:v1"
	multiRef := up.Host() + "/team/multi:v2"
	rows := listImages(ctx, t, node)
	if len(rows) != 2 {
		t.Fatalf("images ls lists %d images, want 2: %v", len(rows), rows)
	}
	a, m := rows[appRef], rows[multiRef]
	if a.Digest != appDigest || !a.Complete || a.Pinned || a.Size != imageSize(t, app) || a.Present != a.Size {
		t.Errorf("app row = %+v; want digest %s, complete, %d bytes present", a, appDigest, imageSize(t, app))
	}
	if m.Digest != idxDigest || m.Complete || len(m.Platforms) != 2 || m.Present >= m.Size {
		t.Errorf("multi row = %+v; want the index, incomplete (arm64 not pulled), 2 platforms", m)
	}
	table := imagesCLI(ctx, t, "images", "ls", "--node", node)
	t.Logf("images ls:\n%s", table.stdout)
	if table.code != 0 || !strings.Contains(table.stdout, "IMAGE") || !strings.Contains(table.stdout, appRef) {
		t.Errorf("images ls table: exit %d:\n%s%s", table.code, table.stdout, table.stderr)
	}

	// inspect by digest, as a user copies it from ls.
	r := imagesCLI(ctx, t, "images", "inspect", up.Host()+"/team/app@"+appDigest, "--node", node, "-o", "json")
	var ins imageRow
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ins) != nil || ins.Digest != appDigest || len(ins.Blobs) != 4 {
		t.Errorf("inspect: exit %d, %+v (stderr %s); want the app with manifest, config and 2 layers", r.code, ins, r.stderr)
	}

	// missing: complete, incomplete (and complete for amd64 alone), unknown.
	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte("# rollout\n"+appRef+"\n\n"+multiRef+"\n"+up.Host()+"/team/nope:v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = imagesCLI(ctx, t, "images", "missing", "-f", list, "--node", node, "-o", "json")
	var miss []struct {
		Ref, Reason string
		Complete    bool
	}
	if err := json.Unmarshal([]byte(r.stdout), &miss); err != nil || len(miss) != 3 {
		t.Fatalf("missing -o json: %v: %s", err, r.stdout)
	}
	if !miss[0].Complete || miss[1].Complete || miss[1].Reason != "blobs missing" || miss[2].Complete || miss[2].Reason != "tag unknown" {
		t.Errorf("missing = %+v; want complete, blobs missing, tag unknown", miss)
	}
	wantCLIError(t, "missing with gaps", r, "2 of 3 images are not complete")
	r = imagesCLI(ctx, t, "images", "missing", multiRef, "--platform", "linux/amd64", "--node", node)
	if r.code != 0 || !strings.Contains(r.stdout, "yes") {
		t.Errorf("missing --platform linux/amd64: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}
	// A platform the index has no manifest for is not complete (prefetch
	// of it fails the same way).
	r = imagesCLI(ctx, t, "images", "missing", multiRef, "--platform", "linux/s390x", "--node", node)
	if r.code == 0 || !strings.Contains(r.stdout, "no manifest for platform linux/s390x") {
		t.Errorf("missing --platform linux/s390x: exit %d:\n%s%s", r.code, r.stdout, r.stderr)
	}

	// pin, unpin.
	if r := imagesCLI(ctx, t, "images", "pin", appRef, "--node", node); r.code != 0 || !strings.Contains(r.stdout, "pinned") {
		t.Fatalf("pin: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	if !listImages(ctx, t, node)[appRef].Pinned {
		t.Errorf("ls does not show %s pinned", appRef)
	}
	if r := imagesCLI(ctx, t, "images", "unpin", appRef, "--node", node); r.code != 0 {
		t.Fatalf("unpin: exit %d: %s", r.code, r.stderr)
	}
	if listImages(ctx, t, node)[appRef].Pinned {
		t.Errorf("ls still shows %s pinned", appRef)
	}
	wantCLIError(t, "unpin twice", imagesCLI(ctx, t, "images", "unpin", appRef, "--node", node), "is not pinned")
	wantCLIError(t, "pin unknown", imagesCLI(ctx, t, "images", "pin", appRef, up.Host()+"/team/nope:v1", "--node", node), "tag unknown")
	if listImages(ctx, t, node)[appRef].Pinned {
		t.Errorf("a failed batch pinned %s anyway", appRef)
	}
	wantCLIError(t, "bad reference", imagesCLI(ctx, t, "images", "rm", "Team/App", "--node", node), "bad repository name")
	wantCLIError(t, "node down", imagesCLI(ctx, t, "images", "ls", "--node", "http://127.0.0.1:9"), "not reachable")

	// rm: the app goes, its blobs leave the disk; the other image stays.
	before := storedBlobs(t, n.dataDir)
	if r := imagesCLI(ctx, t, "images", "rm", appRef, "--node", node); r.code != 0 || !strings.Contains(r.stdout, "deleted 4 blobs") {
		t.Fatalf("rm: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
	rows = listImages(ctx, t, node)
	if _, ok := rows[appRef]; ok || len(rows) != 1 {
		t.Errorf("after rm, ls = %v; want only %s", rows, multiRef)
	}
	after := storedBlobs(t, n.dataDir)
	for d := range imageBlobs(t, app) {
		if _, ok := after[d]; ok {
			t.Errorf("blob %s of the removed image is still on disk", d)
		}
	}
	if len(before)-len(after) != 4 {
		t.Errorf("rm removed %d files, want 4", len(before)-len(after))
	}
	if r := n.getManifest(ctx, t, c, "team/multi", idxDigest); r.status != http.StatusOK {
		t.Errorf("the other image after rm: %d", r.status)
	}
}
