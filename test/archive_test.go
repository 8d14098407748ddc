package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestArchiveImportExport: an image made in a local upstream is copied by
// skopeo to an oci-archive and a docker-archive file; `imgmesh import` loads
// each into a node without upstream or mesh, and the node serves them by tag
// and digest at the ?ns= a containerd mirror pull sends (the oci-archive
// with its digests unchanged). `imgmesh export` of both, imported into a
// second node, keeps every digest; containerd imports that export (`ctr
// images import`) with the same digest, and pulls the docker-archive's image
// through the node.
func TestArchiveImportExport(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	requireTool(t, "skopeo")
	up := startUpstream(t)
	img := hostImage(t, ociImage, 3, 512<<10)
	imgDigest := up.push(ctx, t, "test/app:v1", img)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	ociTar, dockerTar := filepath.Join(dir, "app-oci.tar"), filepath.Join(dir, "app-docker.tar")
	const ociName = "docker.io/imgmesh-e2e/app:v1"
	// A registry on a dead loopback port: containerd's fallback, were the
	// node to fail, stays on this machine.
	const dockerName = "127.0.0.1:9/e2e/app:v2"
	skopeo(ctx, t, "copy", "--src-tls-verify=false", "--preserve-digests",
		"docker://"+up.Host()+"/test/app:v1", "oci-archive:"+ociTar+":"+ociName)
	skopeo(ctx, t, "copy", "--src-tls-verify=false",
		"docker://"+up.Host()+"/test/app:v1", "docker-archive:"+dockerTar+":"+dockerName)

	n := startNode(t, "", "--upstream", "none")
	node := "http://" + n.addr
	c := httpClient(t)

	var dockerDigest string
	t.Run("import oci-archive", func(t *testing.T) {
		start := time.Now()
		out, _ := imgmeshCLI(ctx, t, 0, "import", ociTar, "--node", node, "-q")
		t.Logf("imported %s in %s", ociTar, time.Since(start).Round(time.Millisecond))
		if want := fmt.Sprintf("imported %s %s", ociName, imgDigest); !strings.Contains(out, want) {
			t.Errorf("import printed %q, want %q", out, want)
		}
		for _, ref := range []string{"v1", imgDigest} {
			if got := nodePull(ctx, t, c, n.addr, "docker.io", "imgmesh-e2e/app", ref); got != imgDigest {
				t.Errorf("pull by %s: manifest %s, want the upstream's %s", ref, got, imgDigest)
			}
		}
	})
	t.Run("import docker-archive", func(t *testing.T) {
		out, stderr := imgmeshCLI(ctx, t, 0, "import", dockerTar, "--node", node)
		if !strings.Contains(stderr, "100%") {
			t.Errorf("no progress to 100%% on stderr: %q", stderr)
		}
		f := strings.Fields(out)
		if len(f) != 3 || f[1] != dockerName {
			t.Fatalf("import printed %q, want 'imported %s DIGEST'", out, dockerName)
		}
		dockerDigest = f[2]
		if got := nodePull(ctx, t, c, n.addr, "127.0.0.1:9", "e2e/app", "v2"); got != dockerDigest {
			t.Fatalf("pull by tag: %s, import said %s", got, dockerDigest)
		}
		nodePull(ctx, t, c, n.addr, "127.0.0.1:9", "e2e/app", dockerDigest)
		m := nodeManifest(ctx, t, c, n.addr, "127.0.0.1:9", "e2e/app", "v2")
		if len(m.Layers) != len(cfg.RootFS.DiffIDs) {
			t.Fatalf("%d layers, the image has %d", len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		for i, l := range m.Layers {
			if l.Digest != cfg.RootFS.DiffIDs[i] || l.MediaType != types.OCIUncompressedLayer {
				t.Errorf("layer %d: %s %s, want the uncompressed layer %s", i, l.Digest, l.MediaType, cfg.RootFS.DiffIDs[i])
			}
		}
	})

	exported := filepath.Join(dir, "export.tar")
	t.Run("export and import again", func(t *testing.T) {
		if dockerDigest == "" {
			t.Skip("the docker-archive import failed")
		}
		out, _ := imgmeshCLI(ctx, t, 0, "export", ociName, dockerName+"@"+dockerDigest, "-o", exported, "--node", node, "-q")
		if !strings.Contains(out, imgDigest) || !strings.Contains(out, dockerDigest) {
			t.Errorf("export printed %q", out)
		}
		n2 := startNode(t, "", "--upstream", "none")
		imgmeshCLI(ctx, t, 0, "import", exported, "--node", "http://"+n2.addr, "-q")
		if got := nodePull(ctx, t, c, n2.addr, "docker.io", "imgmesh-e2e/app", "v1"); got != imgDigest {
			t.Errorf("after export and import: %s, want %s", got, imgDigest)
		}
		if got := nodePull(ctx, t, c, n2.addr, "127.0.0.1:9", "e2e/app", dockerDigest); got != dockerDigest {
			t.Errorf("after export and import: %s, want %s", got, dockerDigest)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.tar")
		for _, args := range [][]string{
			{"export", "docker.io/imgmesh-e2e/app:nope", "-o", missing, "--node", node},
			{"export", "Not//A:ref", "-o", missing, "--node", node},
		} {
			_, stderr := imgmeshCLI(ctx, t, 1, args...)
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.HasPrefix(stderr, "imgmesh: ") {
				t.Errorf("%v: stderr %q, want one line", args, stderr)
			}
			if left, _ := filepath.Glob(missing + "*"); len(left) > 0 {
				t.Errorf("%v left %v", args, left)
			}
		}
		bad := filepath.Join(dir, "bad.tar")
		b, err := os.ReadFile(ociTar)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff // inside a layer: they are most of the file
		if err := os.WriteFile(bad, b, 0o644); err != nil {
			t.Fatal(err)
		}
		n3 := startNode(t, "", "--upstream", "none")
		_, stderr := imgmeshCLI(ctx, t, 1, "import", bad, "--node", "http://"+n3.addr, "-q")
		t.Logf("corrupt archive: %s", strings.TrimSpace(stderr))
		if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("stderr %q, want one line", stderr)
		}
		r, err := do(ctx, c, http.MethodGet, "http://"+n3.addr+"/v2/imgmesh-e2e/app/manifests/v1?ns=docker.io", manifestAccept)
		if err != nil || r.status != http.StatusNotFound {
			t.Errorf("after a failed import the tag answers %d (%v), want 404", r.status, err)
		}
	})

	t.Run("containerd", func(t *testing.T) {
		if _, err := os.Stat(exported); err != nil {
			t.Skip("no export to import")
		}
		cd := startContainerd(ctx, t)
		cd.ctr(ctx, t, "images", "import", "--snapshotter", "native", exported)
		if got := cd.imageDigest(ctx, t, ociName); got != imgDigest {
			t.Errorf("ctr images import: %s is %s, want %s", ociName, got, imgDigest)
		}
		// containerd pulls the image made from the docker-archive through
		// the node, and unpacks its uncompressed layers.
		hosts := t.TempDir()
		mustRun(ctx, t, imgmeshBin, "config", "containerd", "--dir", hosts, "--registry", "127.0.0.1:9", "--node", node)
		cd.ctr(ctx, t, "images", "pull", "--hosts-dir", hosts, "--plain-http", "--snapshotter", "native", dockerName)
		if got := cd.imageDigest(ctx, t, dockerName); got != dockerDigest {
			t.Errorf("ctr pull %s: %s, want %s", dockerName, got, dockerDigest)
		}
	})
}

// skopeo runs skopeo with a policy that accepts anything.
func skopeo(ctx context.Context, t *testing.T, args ...string) {
	t.Helper()
	policy := skopeoPolicy(t)
	mustRun(ctx, t, append([]string{"skopeo", "--policy", policy}, args...)...)
}

// imgmeshCLI runs the binary and fails unless it exits with want; it
// returns stdout and stderr.
func imgmeshCLI(ctx context.Context, t *testing.T, want int, args ...string) (string, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, imgmeshBin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Env = append(os.Environ(), noInternet...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("imgmesh %v: %v", args, err)
	}
	if code != want {
		t.Fatalf("imgmesh %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, want, &stdout, &stderr)
	}
	return stdout.String(), stderr.String()
}

// nodeManifest GETs an image manifest from the node with ?ns=.
func nodeManifest(ctx context.Context, t *testing.T, c *http.Client, addr, ns, repo, ref string) *v1.Manifest {
	t.Helper()
	r := mustDo(ctx, t, c, http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+ref+nsQuery(ns), manifestAccept)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s/%s:%s (ns %s): %d %s", addr, repo, ref, ns, r.status, r.body)
	}
	m, err := v1.ParseManifest(bytes.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// nodePull pulls ref of repo (with ?ns=) from the node as a client does:
// the manifest, the manifests an index names, every config and layer, each
// checked against its digest. It returns the manifest's digest.
func nodePull(ctx context.Context, t *testing.T, c *http.Client, addr, ns, repo, ref string) string {
	t.Helper()
	base := "http://" + addr + "/v2/" + repo
	r := mustDo(ctx, t, c, http.MethodGet, base+"/manifests/"+ref+nsQuery(ns), manifestAccept)
	if r.status != http.StatusOK {
		t.Fatalf("GET %s:%s (ns %s): %d %s", repo, ref, ns, r.status, r.body)
	}
	switch mt := types.MediaType(r.header.Get("Content-Type")); {
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range idx.Manifests {
			if got := nodePull(ctx, t, c, addr, ns, repo, m.Digest.String()); got != m.Digest.String() {
				t.Fatalf("manifest %s came as %s", m.Digest, got)
			}
		}
	case mt.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			b := mustDo(ctx, t, c, http.MethodGet, base+"/blobs/"+l.Digest.String()+nsQuery(ns), nil)
			if err := checkPull("blob "+l.Digest.String(), b, nil, b.body, l.Digest.String()); err != nil || int64(len(b.body)) != l.Size {
				t.Fatalf("%v (%d bytes, want %d)", err, len(b.body), l.Size)
			}
		}
	default:
		t.Fatalf("%s:%s: Content-Type %q", repo, ref, mt)
	}
	return sha256Digest(r.body)
}
