package archive

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

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

// TestImportFolderStaysInside: a layer in a docker save folder that is a
// symlink to a file outside the folder is not read, nor pushed.
func TestImportFolderStaysInside(t *testing.T) {
	t.Parallel()
	gz := gzipped(t, []byte("a file of the host, outside the folder"))
	outside := filepath.Join(t.TempDir(), "secret.gz")
	dir := t.TempDir()
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	for name, b := range map[string][]byte{outside: gz, filepath.Join(dir, "cfg.json"): []byte(cfg),
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
	if tn.hasBlob(t, sha(gz)) {
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
	gz := gzipped(t, []byte("not the layer the config names"))
	dir := t.TempDir()
	cfg := `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:` + strings.Repeat("0", 64) + `"]}}`
	write(t, filepath.Join(dir, "layer.tar.gz"), gz)
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
