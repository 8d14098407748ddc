package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/registryapi"
)

// testNode is the real node (registryapi over node.Node over an in-memory
// store, no upstream) behind an httptest server on 127.0.0.1.
type testNode struct {
	url   string
	store blobstore.Store
	c     *http.Client
}

func startTestNode(t *testing.T) *testNode {
	t.Helper()
	store := blobstore.NewMemory()
	n := node.New(node.Options{Store: store})
	h := registryapi.New(registryapi.Options{Source: n, Store: store})
	srv := httptest.NewServer(h)
	tr := &http.Transport{}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		srv.Close()
		h.(*registryapi.Server).Close()
		_ = n.Close()
	})
	return &testNode{url: srv.URL, store: store, c: &http.Client{Transport: tr}}
}

// get GETs /v2/<repo>/<kind>/<ref>?ns=<ns> and returns status and body.
func (tn *testNode) get(t *testing.T, ns, repo, kind, ref string) (int, []byte, string) {
	t.Helper()
	u := tn.url + "/v2/" + repo + "/" + kind + "/" + ref
	if ns != "" {
		u += "?ns=" + ns
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", strings.Join([]string{string(types.OCIManifestSchema1), string(types.OCIImageIndex),
		string(types.DockerManifestSchema2), string(types.DockerManifestList)}, ","))
	resp, err := tn.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header.Get("Content-Type")
}

// pullAll pulls ref (a tag or digest) of repo under ns like a client: the
// manifest, every child manifest, config and layer, each checked against
// its digest. It returns the manifest's digest.
func (tn *testNode) pullAll(t *testing.T, ns, repo, ref string) string {
	t.Helper()
	status, body, ct := tn.get(t, ns, repo, "manifests", ref)
	if status != http.StatusOK {
		t.Fatalf("GET manifest %s/%s:%s (ns %s): %d %s", ns, repo, ref, ns, status, body)
	}
	mt := types.MediaType(ct)
	switch {
	case mt.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range idx.Manifests {
			if got := tn.pullAll(t, ns, repo, c.Digest.String()); got != c.Digest.String() {
				t.Fatalf("child %s came back as %s", c.Digest, got)
			}
		}
	case mt.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			status, b, _ := tn.get(t, ns, repo, "blobs", l.Digest.String())
			if status != http.StatusOK || sha(b) != l.Digest.String() || int64(len(b)) != l.Size {
				t.Fatalf("blob %s: status %d, %d bytes with digest %s", l.Digest, status, len(b), sha(b))
			}
		}
	default:
		t.Fatalf("manifest %s has Content-Type %q", ref, ct)
	}
	return sha(body)
}

// hasBlob reports whether the node's store holds d at all.
func (tn *testNode) hasBlob(t *testing.T, d string) bool {
	t.Helper()
	_, err := tn.store.Stat(context.Background(), digest.Digest(d))
	return err == nil
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

// ociImage is an OCI image of random gzip layers for linux/arch.
func ociImage(t *testing.T, layers int, size int64, arch string) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for range layers {
		l, err := random.Layer(size, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// ociIndex is an OCI index of an amd64 and an arm64 image.
func ociIndex(t *testing.T) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, arch := range []string{"amd64", "arm64"} {
		img := ociImage(t, 2, 8<<10, arch)
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1, Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
}

func digestOf(t *testing.T, x interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	d, err := x.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// writeLayout writes an OCI layout folder holding img and idx (either may
// be nil) with the given index.json annotations.
func writeLayout(t *testing.T, img v1.Image, imgAnn map[string]string, idx v1.ImageIndex, idxAnn map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if img != nil {
		if err := p.AppendImage(img, layout.WithAnnotations(imgAnn)); err != nil {
			t.Fatal(err)
		}
	}
	if idx != nil {
		if err := p.AppendIndex(idx, layout.WithAnnotations(idxAnn)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// tarDir writes the files under dir into a tar (gzip-compressed if gz).
func tarDir(t *testing.T, dir string, gz bool) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "archive.tar")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	var w io.Writer = f
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(f)
		w = zw
	}
	tw := tar.NewWriter(w)
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		h.Name = "./" + filepath.ToSlash(rel) // as GNU tar writes it
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dockerSave writes a folder as `docker save` (before Docker 25) does:
// manifest.json, the config as <id>.json, each layer uncompressed as
// <n>/layer.tar; the second image shares the first one's layers through
// symlinks, as docker save does for repeated layers.
func dockerSave(t *testing.T, img v1.Image, repoTags []string) (dir string, diffIDs []v1.Hash, cfgDigest string) {
	t.Helper()
	dir = t.TempDir()
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfgName := strings.TrimPrefix(sha(cfg), "sha256:") + ".json"
	write(t, filepath.Join(dir, cfgName), cfg)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		d, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		diffIDs = append(diffIDs, d)
		name := fmt.Sprintf("l%d/layer.tar", i)
		if err := os.MkdirAll(filepath.Join(dir, fmt.Sprintf("l%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name), b)
		names = append(names, name)
	}
	// A second image with the same layers, linked as docker save links them.
	if err := os.MkdirAll(filepath.Join(dir, "again"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../l0/layer.tar", filepath.Join(dir, "again", "layer.tar")); err != nil {
		t.Fatal(err)
	}
	again := append([]string{"again/layer.tar"}, names[1:]...)
	man := []map[string]any{{"Config": cfgName, "RepoTags": repoTags, "Layers": names}}
	if len(repoTags) > 0 {
		man = append(man, map[string]any{"Config": cfgName, "RepoTags": []string{repoTags[0] + "-again"}, "Layers": again})
	}
	b, err := json.Marshal(man)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "manifest.json"), b)
	return dir, diffIDs, sha(cfg)
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// corrupt flips one byte in the middle of file p.
func corrupt(t *testing.T, p string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	write(t, p, b)
}

// biggestLayer is the digest of img's largest layer.
func biggestLayer(t *testing.T, img v1.Image) v1.Descriptor {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	best := m.Layers[0]
	for _, l := range m.Layers {
		if l.Size > best.Size {
			best = l
		}
	}
	return best
}

// gzipped is b gzip-compressed.
func gzipped(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
