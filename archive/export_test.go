package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/opencontainers/go-digest"
)

// TestExportRoundTrip: images imported into one node are exported to an
// oci-archive that go-containerregistry's layout reader validates (every
// digest and diff ID), with one annotated index.json entry per ref, and
// that archive imported into another node gives the same digests. The same
// export twice is the same file.
func TestExportRoundTrip(t *testing.T) {
	t.Parallel()
	img, idx := ociImage(t, 3, 48<<10, "amd64"), ociIndex(t)
	imgDigest, idxDigest := digestOf(t, img), digestOf(t, idx)
	src := startTestNode(t)
	in := writeLayout(t, img, map[string]string{AnnotationImageName: "docker.io/library/app:v1"},
		idx, map[string]string{AnnotationImageName: "registry.example:5000/team/multi:v2"})
	if _, err := Import(t.Context(), in, ImportOptions{Node: src.url}); err != nil {
		t.Fatal(err)
	}

	refs := []string{"app:v1", "registry.example:5000/team/multi@" + idxDigest}
	out := filepath.Join(t.TempDir(), "images.tar")
	res, err := Export(t.Context(), refs, out, ExportOptions{Node: src.url})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s.tmp left behind: %v", out, err)
	}
	wantNames := []string{"docker.io/library/app:v1", "registry.example:5000/team/multi@" + idxDigest}
	wantRefNames := []string{"v1", wantNames[1]}
	wantDigests := []string{imgDigest, idxDigest}
	for i, img := range res.Images {
		if img.Name != wantNames[i] || img.Digest.String() != wantDigests[i] {
			t.Errorf("exported %s %s, want %s %s", img.Name, img.Digest, wantNames[i], wantDigests[i])
		}
	}

	p, err := layout.FromPath(untar(t, out))
	if err != nil {
		t.Fatal(err)
	}
	ii, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := ii.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index.json has %d entries, want 2", len(im.Manifests))
	}
	for i, d := range im.Manifests {
		if d.Digest.String() != wantDigests[i] || d.Annotations[AnnotationImageName] != wantNames[i] || d.Annotations[AnnotationRefName] != wantRefNames[i] {
			t.Errorf("entry %d: %s %v, want %s named %s / %s", i, d.Digest, d.Annotations, wantDigests[i], wantNames[i], wantRefNames[i])
		}
	}
	for _, d := range im.Manifests {
		checkLayout(t, p, d)
	}

	dst := startTestNode(t)
	back, err := Import(t.Context(), out, ImportOptions{Node: dst.url})
	if err != nil {
		t.Fatal(err)
	}
	for i, img := range back.Images {
		if img.Name != wantNames[i] || img.Digest.String() != wantDigests[i] {
			t.Errorf("re-imported %s %s, want %s %s", img.Name, img.Digest, wantNames[i], wantDigests[i])
		}
	}
	if got := dst.pullAll(t, "docker.io", "library/app", "v1"); got != imgDigest {
		t.Errorf("re-imported app:v1 pulls as %s, want %s", got, imgDigest)
	}
	dst.pullAll(t, "registry.example:5000", "team/multi", idxDigest)

	again := filepath.Join(t.TempDir(), "again.tar")
	if _, err := Export(t.Context(), refs, again, ExportOptions{Node: src.url}); err != nil {
		t.Fatal(err)
	}
	a, b := readFile(t, out), readFile(t, again)
	if !bytes.Equal(a, b) {
		t.Errorf("two exports of the same images differ (%d and %d bytes)", len(a), len(b))
	}
}

// TestExportErrors: a bad reference, a name the node lacks, or a blob the
// node lost fails with a one-line error and leaves no file (nor .tmp).
func TestExportErrors(t *testing.T) {
	t.Parallel()
	img := ociImage(t, 2, 16<<10, "amd64")
	tn := startTestNode(t)
	in := writeLayout(t, img, map[string]string{AnnotationImageName: "docker.io/library/app:v1"}, nil, nil)
	if _, err := Import(t.Context(), in, ImportOptions{Node: tn.url}); err != nil {
		t.Fatal(err)
	}
	broken := ociImage(t, 2, 16<<10, "amd64")
	in = writeLayout(t, broken, map[string]string{AnnotationImageName: "docker.io/library/broken:v1"}, nil, nil)
	if _, err := Import(t.Context(), in, ImportOptions{Node: tn.url}); err != nil {
		t.Fatal(err)
	}
	lost := biggestLayer(t, broken)
	if err := tn.store.Delete(t.Context(), digest.Digest(lost.Digest.String())); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		refs    []string
		node    string
		wantErr error
		want    string // in the message
	}{
		{name: "bad reference", refs: []string{"app:v1", "Bad//Name:"}, wantErr: ErrBadReference, want: "Bad//Name:"},
		{name: "no reference", refs: nil, wantErr: ErrBadReference},
		{name: "unknown tag", refs: []string{"app:v1", "app:nope"}, wantErr: ErrMissing, want: "app:nope"},
		{name: "unknown namespace", refs: []string{"quay.io/library/app:v1"}, wantErr: ErrMissing, want: "quay.io/library/app:v1"},
		{name: "blob lost on the node", refs: []string{"app:v1", "broken:v1"}, wantErr: ErrMissing, want: lost.Digest.String()},
		{name: "node down", refs: []string{"app:v1"}, node: "http://127.0.0.1:1", want: "not reachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "out.tar")
			node := tn.url
			if tc.node != "" {
				node = tc.node
			}
			_, err := Export(t.Context(), tc.refs, out, ExportOptions{Node: node})
			if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error about %q (%v)", err, tc.want, tc.wantErr)
			}
			t.Logf("error: %v", err)
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error spans lines: %q", err)
			}
			left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), "*"))
			if len(left) > 0 {
				t.Errorf("files left behind: %v", left)
			}
		})
	}
}

// TestExportOutputPath: a path the archive cannot or should not be written
// to fails before any request reaches the node, naming the path as given
// (not its .tmp), and leaves nothing behind; an existing archive is
// replaced.
func TestExportOutputPath(t *testing.T) {
	t.Parallel()
	tn := startTestNode(t)
	in := writeLayout(t, ociImage(t, 1, 4<<10, "amd64"), map[string]string{AnnotationImageName: "docker.io/library/app:v1"}, nil, nil)
	if _, err := Import(t.Context(), in, ImportOptions{Node: tn.url}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	adir := filepath.Join(dir, "adir")
	afile := filepath.Join(dir, "afile")
	fifo := filepath.Join(dir, "fifo")
	old := filepath.Join(dir, "old.tar")
	for _, p := range []string{afile, old} {
		write(t, p, []byte("not an archive"))
	}
	if err := os.Mkdir(adir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, path string
		want       string // the error after "PATH: "; "" = exported
	}{
		{name: "existing directory", path: adir, want: "is a directory; give a file name for the archive"},
		{name: "existing directory, trailing slash", path: adir + "/", want: "is a directory; give a file name for the archive"},
		{name: "missing directory", path: filepath.Join(dir, "nodir", "x.tar"), want: "directory " + filepath.Join(dir, "nodir") + " does not exist"},
		{name: "parent is a file", path: filepath.Join(afile, "x.tar"), want: afile + " is not a directory"},
		{name: "a pipe", path: fifo, want: "is not a regular file; give a file name for the archive"},
		{name: "an older archive", path: old},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := &countingTransport{next: &http.Transport{}}
			defer rt.next.CloseIdleConnections()
			before, _ := filepath.Glob(filepath.Join(dir, "*"))
			_, err := Export(t.Context(), []string{"app:v1"}, tc.path, ExportOptions{Node: tn.url, Transport: rt})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if _, err := layout.FromPath(untar(t, tc.path)); err != nil {
					t.Errorf("%s was not replaced by the archive: %v", tc.path, err)
				}
				return
			}
			if _, ok := errors.AsType[*OutputError](err); !ok || err.Error() != tc.path+": "+tc.want {
				t.Fatalf("got %v (%T), want the OutputError %q", err, err, tc.path+": "+tc.want)
			}
			if rt.requests != 0 {
				t.Errorf("%d requests reached the node before the path was refused", rt.requests)
			}
			if after, _ := filepath.Glob(filepath.Join(dir, "*")); len(after) != len(before) {
				t.Errorf("files before %v, after %v", before, after)
			}
		})
	}
}

// TestExportTo: the archive written to a stream is the one Export writes
// to a file, byte for byte.
func TestExportTo(t *testing.T) {
	t.Parallel()
	tn := startTestNode(t)
	in := writeLayout(t, ociImage(t, 2, 16<<10, "amd64"), map[string]string{AnnotationImageName: "docker.io/library/app:v1"}, nil, nil)
	if _, err := Import(t.Context(), in, ImportOptions{Node: tn.url}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "app.tar")
	if _, err := Export(t.Context(), []string{"app:v1"}, file, ExportOptions{Node: tn.url}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	res, err := ExportTo(t.Context(), []string{"app:v1"}, &buf, ExportOptions{Node: tn.url})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), readFile(t, file)) || len(res.Images) != 1 {
		t.Errorf("streamed %d bytes (%d images), the file has %d", buf.Len(), len(res.Images), len(readFile(t, file)))
	}
}

// untar extracts the tar at p into a new folder.
func untar(t *testing.T, p string) string {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(dst, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, dst, b)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLayout verifies what desc names in layout p, and everything below
// it: each blob's digest and size, each layer's diff ID.
func checkLayout(t *testing.T, p layout.Path, desc v1.Descriptor) {
	t.Helper()
	b := layoutBlob(t, p, desc)
	switch {
	case desc.MediaType.IsIndex():
		idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range idx.Manifests {
			checkLayout(t, p, c)
		}
	case desc.MediaType.IsImage():
		m, err := v1.ParseManifest(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := v1.ParseConfigFile(bytes.NewReader(layoutBlob(t, p, m.Config)))
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.RootFS.DiffIDs) != len(m.Layers) {
			t.Fatalf("image %s: %d layers, %d diff IDs", desc.Digest, len(m.Layers), len(cfg.RootFS.DiffIDs))
		}
		for i, l := range m.Layers {
			zr, err := gzip.NewReader(bytes.NewReader(layoutBlob(t, p, l)))
			if err != nil {
				t.Fatal(err)
			}
			u, err := io.ReadAll(zr)
			if err != nil {
				t.Fatal(err)
			}
			if sha(u) != cfg.RootFS.DiffIDs[i].String() {
				t.Errorf("layer %s uncompresses to %s, config says %s", l.Digest, sha(u), cfg.RootFS.DiffIDs[i])
			}
		}
	default:
		t.Errorf("%s: unexpected media type %s", desc.Digest, desc.MediaType)
	}
}

// layoutBlob reads a blob of p and checks its digest and size.
func layoutBlob(t *testing.T, p layout.Path, desc v1.Descriptor) []byte {
	t.Helper()
	b, err := p.Bytes(desc.Digest)
	if err != nil {
		t.Fatalf("blob %s not in the archive: %v", desc.Digest, err)
	}
	if sha(b) != desc.Digest.String() || int64(len(b)) != desc.Size {
		t.Fatalf("blob %s: %d bytes with digest %s, want %d", desc.Digest, len(b), sha(b), desc.Size)
	}
	return b
}
