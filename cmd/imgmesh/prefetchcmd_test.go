package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/imgmesh/imgmesh/prefetch"
)

// A lone node (--mesh=false) carries out the orders made on it: an image
// pushed to it is prefetched (exit 0); a list with a missing image fails
// with the device's line in the table.
func TestPrefetchOnALoneNode(t *testing.T) {
	dir := t.TempDir()
	n := startServe(t, "--upstream", "none", "--data-dir", dir, "--listen", "127.0.0.1:0", "--node-name", "solo")
	img, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(n.addr+"/line/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	node := "http://" + n.addr

	code, out, errOut := runCLI(t, nil, "prefetch", "--node", node, "line/app:v1", "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "all 1 device(s) complete") || !regexp.MustCompile(`(?m)^solo +complete 100%`).MatchString(out) {
		t.Fatalf("prefetch of a pushed image: exit %d\n%s%s", code, out, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "prefetch.json")); err != nil || !strings.Contains(string(b), `"complete"`) {
		t.Fatalf("DATA/prefetch.json after the order: %v\n%s", err, b)
	}

	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte("# line 3\nline/app:v1\n\nline/missing:v9  # not pushed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = runCLI(t, nil, "prefetch", "--node", node, "-f", list, "--timeout", "30s")
	if code == 0 || !strings.Contains(out, "2 image(s)") || !regexp.MustCompile(`(?m)^solo +failed .*line/missing:v9.*not found`).MatchString(out) {
		t.Fatalf("prefetch of a list with a missing image: exit %d\n%s%s", code, out, errOut)
	}
	if !strings.Contains(errOut, "1 of 1 device(s) failed") {
		t.Errorf("stderr %q: want one line saying how many devices failed", errOut)
	}
}

func TestPrefetchUsageErrors(t *testing.T) {
	dir := t.TempDir()
	badLine := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(badLine, []byte("# images\nnginx:1.27\n\nUPPER:v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	binary := filepath.Join(dir, "binary")
	if err := os.WriteFile(binary, bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 0, 1}, 20000), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no reference", args: []string{"prefetch"}, want: "no image reference"},
		{name: "bad selector", args: []string{"prefetch", "app", "--select", "line"}, want: "want LABEL=VALUE"},
		{name: "missing list", args: []string{"prefetch", "-f", "/nonexistent/list"}, want: "reference list"},
		{name: "bad line in list", args: []string{"prefetch", "-f", badLine}, want: "line 4: \"UPPER:v1\""},
		{name: "binary list", args: []string{"images", "missing", "-f", binary}, want: "is it a list of image references?"},
		{name: "node down", args: []string{"prefetch", "app", "--node", "http://127.0.0.1:1"}, want: "node http://127.0.0.1:1 not reachable"},
		{name: "node without scheme", args: []string{"prefetch", "app", "--node", "127.0.0.1:5000"}, want: "want a URL like"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, nil, tt.args...)
			if code == 0 || !strings.Contains(errOut, tt.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Fatalf("exit %d, stderr %q: want one line with %q", code, errOut, tt.want)
			}
		})
	}
}

// TestTallyCountsGoneMembersFailed: a member the fleet forgot will not
// report again, so the command stops waiting for it and calls it failed;
// an unreachable one may come back and is waited for.
func TestTallyCountsGoneMembersFailed(t *testing.T) {
	done := &prefetch.Report{State: prefetch.Complete}
	pulling := &prefetch.Report{State: prefetch.Pulling}
	st := prefetch.Status{Members: []prefetch.MemberStatus{
		{Name: "a", Report: done},
		{Name: "b", Report: pulling, Unreachable: true},
		{Name: "c", Unreachable: true, Gone: true},
		{Name: "d", Report: pulling, Unreachable: true, Gone: true},
		{Name: "e", Report: done, Unreachable: true, Gone: true},
	}}
	if c, f, w := tally(st); c != 2 || f != 2 || w != 1 {
		t.Fatalf("tally = %d complete, %d failed, %d waiting; want 2, 2, 1", c, f, w)
	}
}
