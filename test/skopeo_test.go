package e2e

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestSkopeoCopy: skopeo copies an image and a multi-arch index from the
// node (no ?ns=: the first upstream) into OCI layouts, digests preserved and
// every layer verifying.
func TestSkopeoCopy(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	requireTool(t, "skopeo")
	up := startUpstream(t)
	img := hostImage(t, ociImage, 3, 256<<10)
	imgDigest := up.push(ctx, t, "test/app:v1", img)
	idx := multiArchIndex(t)
	idxDigest := up.pushIndex(ctx, t, "test/multi:v1", idx)
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--restrict-upstreams")

	// What the node says it serves decides what skopeo writes.
	idxType, err := idx.MediaType()
	if err != nil {
		t.Fatal(err)
	}
	c := httpClient(t)
	for _, tc := range []struct{ name, repo, digest, mediaType string }{
		{name: "image", repo: "test/app", digest: imgDigest, mediaType: string(types.OCIManifestSchema1)},
		{name: "index", repo: "test/multi", digest: idxDigest, mediaType: string(idxType)},
	} {
		r := n.getManifest(ctx, t, c, tc.repo, "v1")
		if r.status != http.StatusOK || sha256Digest(r.body) != tc.digest || r.header.Get("Content-Type") != tc.mediaType {
			t.Errorf("%s manifest from the node: status %d, digest %s, Content-Type %q; want %s, %q",
				tc.name, r.status, sha256Digest(r.body), r.header.Get("Content-Type"), tc.digest, tc.mediaType)
		}
	}

	policy := skopeoPolicy(t)
	copyTo := func(t *testing.T, repoTag string, all bool) v1.Descriptor {
		t.Helper()
		dir := t.TempDir()
		args := []string{"skopeo", "--policy", policy, "copy", "--src-tls-verify=false", "--preserve-digests"}
		if all {
			args = append(args, "--all")
		}
		args = append(args, "docker://"+n.addr+"/"+repoTag, "oci:"+dir+":v1")
		mustRun(ctx, t, args...)
		return layoutEntry(t, dir, "v1")
	}

	t.Run("image", func(t *testing.T) {
		desc := copyTo(t, "test/app:v1", false)
		if desc.Digest.String() != imgDigest {
			t.Fatalf("OCI layout holds %s, pushed %s", desc.Digest, imgDigest)
		}
	})
	t.Run("index --all", func(t *testing.T) {
		desc := copyTo(t, "test/multi:v1", true)
		if desc.Digest.String() != idxDigest {
			t.Fatalf("OCI layout holds %s, pushed index %s", desc.Digest, idxDigest)
		}
	})
	if s := up.proxy.Stats(); s.Requests == 0 {
		t.Errorf("upstream got no request: the node did not pull through")
	}
}

// layoutEntry finds the entry tagged tag in the OCI layout at dir and
// verifies what it names: manifests, configs and every layer by digest and
// size, and each layer's uncompressed digest against the config's diff IDs.
func layoutEntry(t *testing.T, dir, tag string) v1.Descriptor {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("read OCI layout: %v", err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, desc := range im.Manifests {
		if desc.Annotations["org.opencontainers.image.ref.name"] == tag {
			verifyLayoutDesc(t, p, desc)
			return desc
		}
	}
	t.Fatalf("OCI layout %s has no entry tagged %s: %+v", dir, tag, im.Manifests)
	return v1.Descriptor{}
}

// verifyLayoutDesc checks the blob desc names, and everything below it.
func verifyLayoutDesc(t *testing.T, p layout.Path, desc v1.Descriptor) {
	t.Helper()
	b := layoutBlob(t, p, desc)
	switch {
	case desc.MediaType.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("index %s: %v", desc.Digest, err)
		}
		if len(idx.Manifests) == 0 {
			t.Errorf("index %s lists no manifests", desc.Digest)
		}
		for _, child := range idx.Manifests {
			verifyLayoutDesc(t, p, child)
		}
	case desc.MediaType.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("manifest %s: %v", desc.Digest, err)
		}
		cfg, err := v1.ParseConfigFile(bytes.NewReader(layoutBlob(t, p, m.Config)))
		if err != nil {
			t.Fatalf("config %s: %v", m.Config.Digest, err)
		}
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			t.Fatalf("image %s: %d layers, %d diff IDs", desc.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		for i, l := range m.Layers {
			zr, err := gzip.NewReader(bytes.NewReader(layoutBlob(t, p, l)))
			if err != nil {
				t.Fatalf("layer %s: %v", l.Digest, err)
			}
			h := sha256.New()
			if _, err := io.Copy(h, zr); err != nil {
				t.Fatalf("layer %s: %v", l.Digest, err)
			}
			if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != cfg.RootFS.DiffIDs[i].String() {
				t.Errorf("layer %s uncompresses to %s, config says %s", l.Digest, got, cfg.RootFS.DiffIDs[i])
			}
		}
	default:
		t.Errorf("unexpected media type %s for %s", desc.MediaType, desc.Digest)
	}
}

// layoutBlob reads the blob desc names and checks its digest and size.
func layoutBlob(t *testing.T, p layout.Path, desc v1.Descriptor) []byte {
	t.Helper()
	rc, err := p.Blob(desc.Digest)
	if err != nil {
		t.Fatalf("blob %s missing from the layout: %v", desc.Digest, err)
	}
	b, err := readAllClose(rc)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256Digest(b); got != desc.Digest.String() || int64(len(b)) != desc.Size {
		t.Fatalf("blob %s in the layout has digest %s and %d bytes, want %d", desc.Digest, got, len(b), desc.Size)
	}
	return b
}

// TestPushWithUpstreamDown: a node whose upstream does not answer (an
// offline seed, a laptop on an air-gapped line) still takes pushes: the
// HEADs of blobs (skopeo) and of manifests (go-containerregistry) get
// "unknown", not 503, and the image is then served from the node.
func TestPushWithUpstreamDown(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	requireTool(t, "skopeo")
	dead := fmt.Sprintf("http://127.0.0.1:%d", freePort(t)) // nothing listens there
	n := startNode(t, "", "--upstream", "plant.local="+dead, "--restrict-upstreams", "--tag-timeout", "1s")
	img := hostImage(t, ociImage, 2, 64<<10)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	src, policy := ociLayout(t, img, "v1"), skopeoPolicy(t)
	mustRun(ctx, t, "skopeo", "--policy", policy, "copy", "--dest-tls-verify=false", "--preserve-digests",
		"oci:"+src+":v1", "docker://"+n.addr+"/plant/app:v1")
	r := n.getManifest(ctx, t, httpClient(t), "plant/app", "v1")
	if r.status != http.StatusOK || sha256Digest(r.body) != d.String() {
		t.Fatalf("pushed manifest from the node: status %d, digest %s; want %s", r.status, sha256Digest(r.body), d)
	}
	// go-containerregistry (crane, ko) asks for the manifest by tag and by
	// digest before it pushes one, and pushes only after "unknown".
	other := hostImage(t, ociImage, 1, 32<<10)
	if err := remote.Write(ref(t, n.addr, "plant/other:v1"), other, remote.WithContext(ctx)); err != nil {
		t.Fatalf("go-containerregistry push with the upstream down: %v", err)
	}
}

// ociLayout writes img into a new OCI layout directory under tag.
func ociLayout(t *testing.T, img v1.Image, tag string) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag})); err != nil {
		t.Fatal(err)
	}
	return dir
}

// skopeoPolicy is a signature policy file that accepts anything.
func skopeoPolicy(t *testing.T) string {
	t.Helper()
	policy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return policy
}
