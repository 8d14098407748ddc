package archive

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

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
