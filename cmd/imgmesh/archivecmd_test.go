package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

// TestExportOutputPathBeforeNode: a -o path that will not do is refused
// with one line naming it, before the node is asked anything.
func TestExportOutputPathBeforeNode(t *testing.T) {
	var requests atomic.Int32
	node := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		http.NotFound(w, r)
	}))
	defer node.Close()
	dir := t.TempDir()
	adir := filepath.Join(dir, "adir")
	if err := os.Mkdir(adir, 0o755); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		adir:                                 "is a directory; give a file name for the archive",
		filepath.Join(dir, "nodir", "x.tar"): "directory " + filepath.Join(dir, "nodir") + " does not exist",
	} {
		code, out, errOut := runCLI(t, nil, "export", "--node", node.URL, "app:v1", "-o", path)
		if wantErr := "imgmesh: -o " + path + ": " + want + "\n"; code == 0 || errOut != wantErr || out != "" {
			t.Errorf("export -o %s: exit %d, stdout %q, stderr %q; want exit 1 and %q", path, code, out, errOut, wantErr)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests reached the node", n)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 {
		t.Errorf("files left: %v", left)
	}
}

// TestExportToStdout: -o - writes the oci-archive to stdout and the list of
// images to stderr; the tar imports back with the same digest, and no file
// named "-" appears.
func TestExportToStdout(t *testing.T) {
	t.Chdir(t.TempDir())
	n := startServe(t, "--upstream", "none", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0")
	node := "http://" + n.addr
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	p, err := layout.Write(src, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{"io.containerd.image.name": "docker.io/library/app:v1"})); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := runCLI(t, nil, "import", "-q", "--node", node, src); code != 0 {
		t.Fatalf("import: exit %d\n%s%s", code, out, errOut)
	}
	// What is imported is pinned: a quota does not evict it.
	if code, out, errOut := runCLI(t, nil, "images", "ls", "-o", "json", "--node", node); code != 0 || !strings.Contains(out, `"pinned": true`) {
		t.Fatalf("images ls after import: exit %d, want the image pinned\n%s%s", code, out, errOut)
	}

	code, out, errOut := runCLI(t, nil, "export", "-q", "--node", node, "app:v1", "-o", "-")
	if want := "exported docker.io/library/app:v1 " + d.String() + "\n"; code != 0 || errOut != want {
		t.Fatalf("export -o -: exit %d, stderr %q; want %q", code, errOut, want)
	}
	if _, err := os.Stat("-"); err == nil {
		t.Error(`export -o - wrote a file named "-"`)
	}
	archive := filepath.Join(t.TempDir(), "app.tar")
	if err := os.WriteFile(archive, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI(t, nil, "import", "-q", "--node", node, "--name", "again:v2", archive)
	if want := "imported docker.io/library/again:v2 " + d.String(); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("import of the streamed archive: exit %d\n%s%s; want %q", code, out, errOut, want)
	}
}

// TestDevNullIsNoTerminal: /dev/null is a character device, not a
// terminal: `export -o - >/dev/null` (pull an image through the node and
// drop it) must not be refused as a terminal.
func TestDevNullIsNoTerminal(t *testing.T) {
	f, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if isTerminal(f) || canRedraw(f) {
		t.Fatal("/dev/null taken for a terminal")
	}
}
