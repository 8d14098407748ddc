package archive

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// landing is where a test expects an imported name on the node.
type landing struct {
	ns, repo, tag string
	digest        string // "" = whatever Import reported
}

// TestImportFormats: each input format lands under the names it carries,
// at the ?ns= a containerd mirror pull of that name sends, digests kept, and
// every blob pulls back verified. Without ?ns= the node has nothing (the
// names were not filed under a bare repository).
func TestImportFormats(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 3, 64<<10, "amd64")
	idx := ociIndex(t)
	imgDigest, idxDigest := digestOf(t, img), digestOf(t, idx)

	ociDir := writeLayout(t, img, map[string]string{AnnotationImageName: "docker.io/library/app:v1", AnnotationRefName: "v1"},
		idx, map[string]string{AnnotationRefName: "registry.example:5000/team/multi:v2"})

	ggcrTar := filepath.Join(t.TempDir(), "ggcr.tar")
	tag, err := name.NewTag("app:v3")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(ggcrTar, tag, img); err != nil {
		t.Fatal(err)
	}
	saveDir, _, _ := dockerSave(t, img, []string{"example.com/app:v4", "example.com/team/other:v5"})
	// docker save since Docker 25: an OCI layout plus the old manifest.json.
	docker25 := writeLayout(t, img, map[string]string{AnnotationImageName: "docker.io/library/app:v1", AnnotationRefName: "v1"}, nil, nil)
	write(t, filepath.Join(docker25, "manifest.json"), []byte(`[{"Config":"blobs/sha256/x","RepoTags":["app:v1"],"Layers":[]}]`))

	for _, tc := range []struct {
		name   string
		path   string
		format string
		want   []landing
	}{
		{name: "oci layout folder", path: ociDir, format: FormatOCILayout, want: []landing{
			{ns: "docker.io", repo: "library/app", tag: "v1", digest: imgDigest},
			{ns: "registry.example:5000", repo: "team/multi", tag: "v2", digest: idxDigest},
		}},
		{name: "oci-archive", path: tarDir(t, ociDir, false), format: FormatOCIArchive, want: []landing{
			{ns: "docker.io", repo: "library/app", tag: "v1", digest: imgDigest},
			{ns: "registry.example:5000", repo: "team/multi", tag: "v2", digest: idxDigest},
		}},
		{name: "gzip oci-archive", path: tarDir(t, ociDir, true), format: FormatOCIArchive, want: []landing{
			{ns: "docker.io", repo: "library/app", tag: "v1", digest: imgDigest},
			{ns: "registry.example:5000", repo: "team/multi", tag: "v2", digest: idxDigest},
		}},
		{name: "docker-archive, gzip layers", path: ggcrTar, format: FormatDockerArchive, want: []landing{
			{ns: "docker.io", repo: "library/app", tag: "v3"},
		}},
		{name: "docker save, uncompressed layers", path: tarDir(t, saveDir, false), format: FormatDockerArchive, want: []landing{
			{ns: "example.com", repo: "app", tag: "v4"},
			{ns: "example.com", repo: "team/other", tag: "v5"},
			{ns: "example.com", repo: "app", tag: "v4-again"},
		}},
		{name: "docker save of Docker 25", path: tarDir(t, docker25, false), format: FormatOCIArchive, want: []landing{
			{ns: "docker.io", repo: "library/app", tag: "v1", digest: imgDigest},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := startTestNode(t)
			res, err := Import(t.Context(), tc.path, ImportOptions{Node: tn.url})
			if err != nil {
				t.Fatal(err)
			}
			if res.Format != tc.format || len(res.Images) != len(tc.want) {
				t.Fatalf("format %s, images %+v; want %s and %d images", res.Format, res.Images, tc.format, len(tc.want))
			}
			for i, w := range tc.want {
				wantDigest := w.digest
				if wantDigest == "" {
					wantDigest = res.Images[i].Digest.String()
				}
				if got := res.Images[i]; got.Name != w.ns+"/"+w.repo+":"+w.tag || got.Digest.String() != wantDigest {
					t.Errorf("image %d: %s %s, want %s/%s:%s %s", i, got.Name, got.Digest, w.ns, w.repo, w.tag, wantDigest)
				}
				if got := tn.pullAll(t, w.ns, w.repo, w.tag); got != wantDigest {
					t.Errorf("%s/%s:%s pulls as %s, want %s", w.ns, w.repo, w.tag, got, wantDigest)
				}
				tn.pullAll(t, w.ns, w.repo, wantDigest)
				if status, _, _ := tn.get(t, "", w.repo, "manifests", w.tag); status != http.StatusNotFound {
					t.Errorf("%s:%s without ?ns=: status %d, want 404 (pushed without ns)", w.repo, w.tag, status)
				}
			}
		})
	}
}

// TestImportDockerSaveManifest: a docker save archive gets an OCI manifest
// whose config is the saved config byte for byte and whose layers are the
// saved (uncompressed) tars, so their digests are the config's diff IDs;
// the same archive gives the same digest again.
func TestImportDockerSaveManifest(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 2, 32<<10, "amd64")
	dir, diffIDs, cfgDigest := dockerSave(t, img, []string{"example.com/app:v1"})
	tn := startTestNode(t)
	res, err := Import(t.Context(), dir, ImportOptions{Node: tn.url})
	if err != nil {
		t.Fatal(err)
	}
	status, body, ct := tn.get(t, "example.com", "app", "manifests", "v1")
	if status != http.StatusOK || ct != string(types.OCIManifestSchema1) {
		t.Fatalf("manifest: %d %q", status, ct)
	}
	m, err := v1.ParseManifest(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.Digest.String() != cfgDigest || m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config %s %s, want the saved config %s", m.Config.Digest, m.Config.MediaType, cfgDigest)
	}
	if len(m.Layers) != len(diffIDs) {
		t.Fatalf("%d layers, want %d", len(m.Layers), len(diffIDs))
	}
	for i, l := range m.Layers {
		if l.Digest != diffIDs[i] || l.MediaType != types.OCIUncompressedLayer {
			t.Errorf("layer %d: %s %s, want %s %s", i, l.Digest, l.MediaType, diffIDs[i], types.OCIUncompressedLayer)
		}
	}
	again, err := Import(t.Context(), tarDir(t, dir, true), ImportOptions{Node: startTestNode(t).url})
	if err != nil {
		t.Fatal(err)
	}
	if again.Images[0].Digest != res.Images[0].Digest {
		t.Errorf("the same docker save imported twice: %s then %s", res.Images[0].Digest, again.Images[0].Digest)
	}
}

// TestImportNames: --name replaces the archive's names; an archive that
// names an image only by a tag needs it.
func TestImportNames(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 1, 4<<10, "amd64")
	d := digestOf(t, img)
	tagged := writeLayout(t, img, map[string]string{AnnotationRefName: "v7"}, nil, nil)
	two := writeLayout(t, img, map[string]string{AnnotationRefName: "v7"}, ociIndex(t), map[string]string{AnnotationRefName: "v8"})
	unnamed := writeLayout(t, img, nil, nil, nil)
	for _, tc := range []struct {
		name, path, override string
		want                 []string // image names; nil = an error
		wantErr              error
	}{
		{name: "bare tag needs --name", path: tagged, wantErr: ErrNoName},
		{name: "no name needs --name", path: unnamed, wantErr: ErrNoName},
		{name: "repository keeps the tag", path: tagged, override: "ghcr.io/acme/tool", want: []string{"ghcr.io/acme/tool:v7"}},
		{name: "repository, no tag: by digest", path: unnamed, override: "acme/tool", want: []string{"docker.io/acme/tool@" + d}},
		{name: "full reference", path: tagged, override: "nginx:1.27", want: []string{"docker.io/library/nginx:1.27"}},
		{name: "digest reference must match", path: tagged, override: "nginx@sha256:" + strings.Repeat("a", 64), wantErr: ErrBadReference},
		{name: "repository for two images", path: two, override: "localhost:5001/x", want: []string{"localhost:5001/x:v7", "localhost:5001/x:v8"}},
		{name: "one reference for two images", path: two, override: "x:1"},
		{name: "bad name", path: tagged, override: "UPPER/Case:!", wantErr: ErrBadReference},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := startTestNode(t)
			res, err := Import(t.Context(), tc.path, ImportOptions{Node: tn.url, Name: tc.override})
			if tc.want == nil {
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("got %v, want an error (%v)", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, img := range res.Images {
				got = append(got, img.Name)
				ref, err := parseRef(img.Name)
				if err != nil {
					t.Fatal(err)
				}
				tn.pullAll(t, ref.ns, ref.repo, ref.tag+ref.digest)
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("names %v, want %v", got, tc.want)
			}
		})
	}
}

// TestImportNameClash: an archive in which two different images would get
// the same name (from its annotations, docker save's RepoTags, or --name
// REPOSITORY keeping their tags) is refused before anything is pushed,
// naming the name; the node would keep only one of them. The same name on
// the same image twice is imported once.
func TestImportNameClash(t *testing.T) {
	t.Parallel()
	a, b := ociImage(t, 1, 4<<10, "amd64"), ociImage(t, 1, 4<<10, "amd64")
	foo := map[string]string{AnnotationImageName: "docker.io/library/foo:v1"}
	ociClash := writeLayout(t, a, foo, nil, nil)
	appendImage(t, ociClash, b, foo)
	ociTwice := writeLayout(t, a, foo, nil, nil)
	appendImage(t, ociTwice, a, foo)
	appAndOther := writeLayout(t, a, map[string]string{AnnotationImageName: "docker.io/library/app:v1"}, nil, nil)
	appendImage(t, appAndOther, b, map[string]string{AnnotationImageName: "example.com/other:v1"})

	// docker save of two images, then manifest.json edited to give both
	// one RepoTag (foo:v1 and docker.io/library/foo:v1 are one name).
	saveTar := filepath.Join(t.TempDir(), "save.tar")
	tagA, tagB := name.MustParseReference("example.com/a:1"), name.MustParseReference("example.com/b:1")
	if err := tarball.MultiRefWriteToFile(saveTar, map[name.Reference]v1.Image{tagA: a, tagB: b}); err != nil {
		t.Fatal(err)
	}
	saveClash := untar(t, saveTar)
	retag(t, saveClash, "foo:v1", "docker.io/library/foo:v1")

	for _, tc := range []struct {
		name, path, override string
		clash                string   // the name the error must give; "" = no error
		want                 []string // image names imported
	}{
		{name: "oci annotations", path: tarDir(t, ociClash, false), clash: "docker.io/library/foo:v1"},
		{name: "docker save RepoTags", path: saveClash, clash: "docker.io/library/foo:v1"},
		{name: "--name REPOSITORY keeps both tags", path: appAndOther, override: "foo", clash: "docker.io/library/foo:v1"},
		{name: "same image, same name", path: ociTwice, want: []string{"docker.io/library/foo:v1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := startTestNode(t)
			res, err := Import(t.Context(), tc.path, ImportOptions{Node: tn.url, Name: tc.override})
			if tc.clash == "" {
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, img := range res.Images {
					got = append(got, img.Name)
				}
				if strings.Join(got, " ") != strings.Join(tc.want, " ") {
					t.Errorf("imported %v, want %v", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("imported %+v, want an error: two images named %s", res.Images, tc.clash)
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), " "+tc.clash+" ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q does not name %s on one line", err, tc.clash)
			}
			for _, img := range []v1.Image{a, b} {
				cfg, err := img.ConfigName()
				if err != nil {
					t.Fatal(err)
				}
				if tn.hasBlob(t, cfg.String()) {
					t.Errorf("config %s pushed before the clash was found", cfg)
				}
			}
			if status, _, _ := tn.get(t, "docker.io", "library/foo", "manifests", "v1"); status != http.StatusNotFound {
				t.Errorf("foo:v1 tagged: status %d", status)
			}
		})
	}
}

// appendImage adds img to the OCI layout in dir, annotated with ann.
func appendImage(t *testing.T, dir string, img v1.Image, ann map[string]string) {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(ann)); err != nil {
		t.Fatal(err)
	}
}

// retag gives each image of the docker save folder dir the RepoTag tags[i].
func retag(t *testing.T, dir string, tags ...string) {
	t.Helper()
	var m tarball.Manifest
	if err := json.Unmarshal(readFile(t, filepath.Join(dir, "manifest.json")), &m); err != nil {
		t.Fatal(err)
	}
	if len(m) != len(tags) {
		t.Fatalf("manifest.json has %d images, want %d", len(m), len(tags))
	}
	for i := range m {
		m[i].RepoTags = []string{tags[i]}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "manifest.json"), b)
}

// TestImportBadInput: a blob whose bytes do not match its digest, a
// missing or truncated blob, or a path that is no archive fails with a
// clear error, and nothing is visible under the bad digest or the tag.
func TestImportBadInput(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 2, 64<<10, "amd64")
	bad := biggestLayer(t, img)
	ann := map[string]string{AnnotationImageName: "docker.io/library/app:v1"}
	layoutWith := func(change func(blob string)) string {
		dir := writeLayout(t, img, ann, nil, nil)
		change(filepath.Join(dir, "blobs", "sha256", bad.Digest.Hex))
		return dir
	}
	flipped := layoutWith(func(p string) { corrupt(t, p) })
	saveDir, diffIDs, _ := dockerSave(t, img, []string{"app:v1"})
	corrupt(t, filepath.Join(saveDir, "l1", "layer.tar"))
	imgDigest := digestOf(t, img)
	manFlipped := writeLayout(t, img, ann, nil, nil)
	corrupt(t, filepath.Join(manFlipped, "blobs", "sha256", strings.TrimPrefix(imgDigest, "sha256:")))
	notArchive := filepath.Join(t.TempDir(), "notes.txt")
	write(t, notArchive, []byte("not a tar\n"))

	for _, tc := range []struct {
		name    string
		path    string
		badBlob string
		wantErr error
	}{
		{name: "flipped byte in a layer", path: flipped, badBlob: bad.Digest.String(), wantErr: ErrDigest},
		{name: "flipped byte, oci-archive", path: tarDir(t, flipped, false), badBlob: bad.Digest.String(), wantErr: ErrDigest},
		{name: "truncated layer", path: layoutWith(func(p string) {
			if err := os.Truncate(p, bad.Size/2); err != nil {
				t.Fatal(err)
			}
		}), badBlob: bad.Digest.String(), wantErr: ErrDigest},
		{name: "missing layer", path: layoutWith(func(p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}), badBlob: bad.Digest.String(), wantErr: ErrMissing},
		{name: "docker save, layer not its diff ID", path: tarDir(t, saveDir, false), badBlob: diffIDs[1].String(), wantErr: ErrDigest},
		{name: "flipped byte in the manifest", path: manFlipped, badBlob: imgDigest, wantErr: ErrDigest},
		{name: "not an archive", path: notArchive, wantErr: ErrFormat},
		{name: "empty folder", path: t.TempDir(), wantErr: ErrFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tn := startTestNode(t)
			_, err := Import(t.Context(), tc.path, ImportOptions{Node: tn.url})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			t.Logf("error: %v", err)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			if tc.badBlob != "" {
				if !strings.Contains(err.Error(), tc.badBlob) {
					t.Errorf("error does not name the bad blob %s: %v", tc.badBlob, err)
				}
				if tn.hasBlob(t, tc.badBlob) {
					t.Errorf("the node stored %s", tc.badBlob)
				}
			}
			for _, ns := range []string{"docker.io", ""} {
				if status, _, _ := tn.get(t, ns, "library/app", "manifests", "v1"); status != http.StatusNotFound {
					t.Errorf("tag visible (ns %q): status %d", ns, status)
				}
			}
		})
	}
}

// TestImportSkipsMissingPlatform: an index whose archive lacks one platform
// (docker save of the host platform only) is imported whole with its
// digest, and the missing platform is reported.
func TestImportSkipsMissingPlatform(t *testing.T) {
	t.Parallel()
	idx, im, dir := multiLayout(t)
	arm := im.Manifests[1].Digest
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", arm.Hex)); err != nil {
		t.Fatal(err)
	}
	tn := startTestNode(t)
	res, err := Import(t.Context(), dir, ImportOptions{Node: tn.url})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Digest != arm {
		t.Fatalf("skipped %+v, want the arm64 manifest %s", res.Skipped, arm)
	}
	if status, body, _ := tn.get(t, "docker.io", "library/multi", "manifests", "v1"); status != http.StatusOK || sha(body) != digestOf(t, idx) {
		t.Fatalf("index: %d, digest %s, want %s", status, sha(body), digestOf(t, idx))
	}
	amd := im.Manifests[0].Digest.String()
	if got := tn.pullAll(t, "docker.io", "library/multi", amd); got != amd {
		t.Fatalf("amd64 image pulls as %s", got)
	}
}

// multiLayout writes an OCI layout of a two-platform index named
// docker.io/library/multi:v1.
func multiLayout(t *testing.T) (v1.ImageIndex, *v1.IndexManifest, string) {
	t.Helper()
	idx := ociIndex(t)
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return idx, im, writeLayout(t, nil, nil, idx, map[string]string{AnnotationImageName: "docker.io/library/multi:v1"})
}

// TestImportRefusesAnIndexWithNoPlatform: an index none of whose
// manifests the archive holds is refused, and no tag appears.
func TestImportRefusesAnIndexWithNoPlatform(t *testing.T) {
	t.Parallel()
	_, im, dir := multiLayout(t)
	for _, m := range im.Manifests {
		if err := os.Remove(filepath.Join(dir, "blobs", "sha256", m.Digest.Hex)); err != nil {
			t.Fatal(err)
		}
	}
	tn := startTestNode(t)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url}); !errors.Is(err, ErrMissing) {
		t.Fatalf("got %v, want ErrMissing", err)
	}
	if status, _, _ := tn.get(t, "docker.io", "library/multi", "manifests", "v1"); status != http.StatusNotFound {
		t.Fatalf("tag visible: status %d", status)
	}
}

// TestImportNodeDown: an unreachable node is a one-line error.
func TestImportNodeDown(t *testing.T) {
	t.Parallel()
	dir := writeLayout(t, ociImage(t, 1, 1<<10, "amd64"), map[string]string{AnnotationRefName: "docker.io/library/a:1"}, nil, nil)
	tn := startTestNode(t)
	url := tn.url
	_, err := Import(t.Context(), dir, ImportOptions{Node: "http://127.0.0.1:1"})
	if err == nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("got %v, want a one-line error", err)
	}
	t.Logf("error: %v", err)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: url + "/some/path"}); err == nil {
		t.Fatal("a node URL with a path was accepted")
	}
	// A login in a URL that does not parse is not echoed.
	if _, err := Import(t.Context(), dir, ImportOptions{Node: "tech:s3cret@127.0.0.1:5000"}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("node URL without a scheme: %v; want an error without the password", err)
	}
}

// TestImportSendsBlobsOnce: names in several repositories of one registry
// send each blob once (later repositories mount it), and an import of
// what the node already holds sends no blob at all.
func TestImportSendsBlobsOnce(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 3, 16<<10, "amd64")
	dir, _, _ := dockerSave(t, img, []string{"example.com/a:1", "example.com/b:1", "example.com/c/d:1"})
	tn := startTestNode(t)
	rt := &countingTransport{next: &http.Transport{}}
	defer rt.next.CloseIdleConnections()
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url, Transport: rt}); err != nil {
		t.Fatal(err)
	}
	if want := 4; rt.uploads != want { // the config and 3 layers
		t.Errorf("%d blob uploads, want %d", rt.uploads, want)
	}
	for _, repo := range []string{"a", "b", "c/d"} {
		tn.pullAll(t, "example.com", repo, "1")
	}
	rt.uploads = 0
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url, Transport: rt}); err != nil {
		t.Fatal(err)
	}
	if rt.uploads != 0 {
		t.Errorf("importing again sent %d blobs, want none", rt.uploads)
	}
}

// countingTransport counts requests, and blob upload requests that carry
// data.
type countingTransport struct {
	next     *http.Transport
	mu       sync.Mutex
	requests int
	uploads  int
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.requests++
	if r.Method == http.MethodPatch || (r.Method == http.MethodPut && r.ContentLength > 0 && strings.Contains(r.URL.Path, "/blobs/uploads/")) {
		c.uploads++
	}
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// TestImportFolderStaysInside: a layer in a docker save folder that is a
// symlink to a file outside the folder is not read, nor pushed.
func TestImportFolderStaysInside(t *testing.T) {
	t.Parallel()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write([]byte("a file of the host, outside the folder")); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	outside := filepath.Join(t.TempDir(), "secret.gz")
	dir := t.TempDir()
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	for name, b := range map[string][]byte{outside: gz.Bytes(), filepath.Join(dir, "cfg.json"): []byte(cfg),
		filepath.Join(dir, "manifest.json"): []byte(`[{"Config":"cfg.json","RepoTags":["example.com/x:1"],"Layers":["layer.tar.gz"]}]`)} {
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(dir, "layer.tar.gz")); err != nil {
		t.Fatal(err)
	}
	tn := startTestNode(t)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url}); err == nil {
		t.Fatal("a folder whose layer links outside it was imported")
	}
	if tn.hasBlob(t, sha(gz.Bytes())) {
		t.Fatal("the file outside the folder reached the node")
	}
}

// TestImportFailureTagsNothing: in an archive of two images whose second
// has a corrupt layer, the import fails and neither image is tagged.
func TestImportFailureTagsNothing(t *testing.T) {
	t.Parallel()
	good, bad := ociImage(t, 1, 4<<10, "amd64"), ociImage(t, 1, 4<<10, "amd64")
	dir := writeLayout(t, good, map[string]string{AnnotationImageName: "docker.io/library/good:v1"}, nil, nil)
	other := writeLayout(t, bad, map[string]string{AnnotationImageName: "docker.io/library/bad:v1"}, nil, nil)
	blobs, err := os.ReadDir(filepath.Join(other, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range blobs {
		b, err := os.ReadFile(filepath.Join(other, "blobs", "sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, "blobs", "sha256", e.Name()), b)
	}
	var idx, idx2 v1.IndexManifest
	for p, into := range map[string]*v1.IndexManifest{dir: &idx, other: &idx2} {
		b, err := os.ReadFile(filepath.Join(p, "index.json"))
		if err != nil || json.Unmarshal(b, into) != nil {
			t.Fatalf("index.json of %s: %v", p, err)
		}
	}
	idx.Manifests = append(idx.Manifests, idx2.Manifests...)
	b, err := json.Marshal(idx)
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "index.json"), b)
	corrupt(t, filepath.Join(dir, "blobs", "sha256", biggestLayer(t, bad).Digest.Hex))

	tn := startTestNode(t)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: tn.url}); !errors.Is(err, ErrDigest) {
		t.Fatalf("got %v, want ErrDigest", err)
	}
	for _, repo := range []string{"library/good", "library/bad"} {
		if status, _, _ := tn.get(t, "docker.io", repo, "manifests", "v1"); status != http.StatusNotFound {
			t.Errorf("%s:v1 tagged after a failed import: status %d", repo, status)
		}
	}
}

// TestImportChecksCompressedLayersAgainstDiffIDs: a compressed layer of a
// docker save whose content is not what the config's diff ID says fails
// the import, naming it; nothing is tagged.
func TestImportChecksCompressedLayersAgainstDiffIDs(t *testing.T) {
	t.Parallel()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write([]byte("not the layer the config names")); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	dir := t.TempDir()
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	write(t, filepath.Join(dir, "layer.tar.gz"), gz.Bytes())
	write(t, filepath.Join(dir, "cfg.json"), []byte(cfg))
	write(t, filepath.Join(dir, "manifest.json"), []byte(`[{"Config":"cfg.json","RepoTags":["example.com/x:1"],"Layers":["layer.tar.gz"]}]`))
	tn := startTestNode(t)
	_, err := Import(t.Context(), dir, ImportOptions{Node: tn.url})
	if !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), "layer.tar.gz") {
		t.Fatalf("got %v, want ErrDigest naming layer.tar.gz", err)
	}
	if status, _, _ := tn.get(t, "example.com", "x", "manifests", "1"); status != http.StatusNotFound {
		t.Fatalf("tag visible: status %d", status)
	}
}

// TestDecompressStopsOnCancel: a Ctrl-C while a gzip-compressed archive is
// decompressed stops it and leaves no temporary copy behind.
func TestDecompressStopsOnCancel(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	gz := tarDir(t, writeLayout(t, ociImage(t, 2, 256<<10, "amd64"), nil, nil, nil), true)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if a, err := openArchive(ctx, gz); !errors.Is(err, context.Canceled) {
		if err == nil {
			a.close()
		}
		t.Fatalf("open a compressed archive after Ctrl-C: %v, want %v", err, context.Canceled)
	}
	left, _ := filepath.Glob(filepath.Join(tmp, "imgmesh-import-*"))
	if len(left) > 0 {
		t.Errorf("decompressed copies left behind: %v", left)
	}
	a, err := openArchive(t.Context(), gz)
	if err != nil {
		t.Fatal(err)
	}
	a.close()
}

// TestImportNodeHangs: a node that answers the first request and then
// never again fails the import with a one-line error, not a hang.
func TestImportNodeHangs(t *testing.T) {
	defer func(d time.Duration) { nodeResponseTimeout = d }(nodeResponseTimeout)
	nodeResponseTimeout = 300 * time.Millisecond
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			return
		}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	dir := writeLayout(t, ociImage(t, 1, 1<<10, "amd64"), map[string]string{AnnotationRefName: "docker.io/library/a:1"}, nil, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err := Import(ctx, dir, ImportOptions{Node: srv.URL})
	if err == nil || ctx.Err() != nil || strings.Contains(err.Error(), "\n") {
		t.Fatalf("import to a hung node: %v (context: %v), want a one-line error before the context ends", err, ctx.Err())
	}
	t.Logf("error: %v", err)
}
