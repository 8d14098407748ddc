package e2e

import (
	"encoding/xml"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// conformanceEnv enables every API and data category of the OCI
// distribution-spec conformance program (the same set as registryapi's
// in-process conformance test).
var conformanceEnv = []string{
	"OCI_TLS=disabled",
	"OCI_REPO1=conformance/repo1",
	"OCI_REPO2=conformance/repo2",
	"OCI_VERSION=1.1",
	"OCI_API_PING=true",
	"OCI_API_PULL=true",
	"OCI_API_PUSH=true",
	"OCI_API_BLOBS_ATOMIC=true",
	"OCI_API_BLOBS_DELETE=true",
	"OCI_API_BLOBS_DIGEST_HEADER=true",
	"OCI_API_BLOBS_MOUNT_ANONYMOUS=true",
	"OCI_API_BLOBS_UPLOAD_CANCEL=true",
	"OCI_API_MANIFESTS_ATOMIC=true",
	"OCI_API_MANIFESTS_DELETE=true",
	"OCI_API_MANIFESTS_DIGEST_HEADER=true",
	"OCI_API_MANIFESTS_TAG_PARAM=true",
	"OCI_API_TAGS_ATOMIC=true",
	"OCI_API_TAGS_DELETE=true",
	"OCI_API_TAGS_LIST=true",
	"OCI_API_REFERRER=true",
	"OCI_DATA_IMAGE=true",
	"OCI_DATA_INDEX=true",
	"OCI_DATA_INDEX_LIST=true",
	"OCI_DATA_SPARSE=true",
	"OCI_DATA_ARTIFACT=true",
	"OCI_DATA_SUBJECT=true",
	"OCI_DATA_SUBJECT_MISSING=true",
	"OCI_DATA_ARTIFACT_LIST=true",
	"OCI_DATA_SUBJECT_LIST=true",
	"OCI_DATA_DATA_FIELD=true",
	"OCI_DATA_NONDISTRIBUTABLE=true",
	"OCI_DATA_CUSTOM_FIELDS=true",
	"OCI_DATA_NO_LAYERS=true",
	"OCI_DATA_EMPTY_BLOB=true",
	"OCI_DATA_SHA512=true",
}

// conformanceBin finds the conformance program: $IMGMESH_CONFORMANCE, else
// bin/conformance (make installs it there).
func conformanceBin(t *testing.T) string {
	t.Helper()
	path := os.Getenv("IMGMESH_CONFORMANCE")
	if path == "" {
		abs, err := filepath.Abs(filepath.Join("..", "bin", "conformance"))
		if err != nil {
			t.Fatal(err)
		}
		path = abs
	}
	if _, err := os.Stat(path); err != nil {
		msg := "OCI conformance program not found (run `make test`, which installs it to bin/, or set IMGMESH_CONFORMANCE): " + err.Error()
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return path
}

// TestConformanceBinary: the real binary, as a pure local registry (no
// upstream), passes the OCI distribution-spec conformance program with
// every category enabled.
func TestConformanceBinary(t *testing.T) {
	t.Parallel()
	bin := conformanceBin(t)
	ctx := testContext(t, 2*time.Minute)

	// No upstream at all: the config file empties the default list.
	cfg := filepath.Join(t.TempDir(), "imgmesh.yaml")
	if err := os.WriteFile(cfg, []byte("upstreams: []\nrestrict_upstreams: true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := startNode(t, "", "--config", cfg, "--restrict-upstreams")

	results := t.TempDir()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = results
	cmd.Env = append(os.Environ(), append([]string{
		"OCI_REGISTRY=" + n.addr,
		"OCI_RESULTS_DIR=" + results,
	}, conformanceEnv...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, runErr := cmd.CombinedOutput()

	sum, err := readJunit(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("conformance wrote no readable junit.xml (%v); exit: %v\n%s", err, runErr, tailLines(string(out), 60))
	}
	passed := sum.Tests - sum.Failures - sum.Errors - sum.Skipped - sum.Disabled
	t.Logf("OCI conformance: %d passed, %d failed, %d errors, %d skipped, %d disabled of %d",
		passed, sum.Failures, sum.Errors, sum.Skipped, sum.Disabled, sum.Tests)
	if runErr != nil || sum.Failures > 0 || sum.Errors > 0 {
		t.Errorf("conformance failed (exit: %v):\n%s", runErr, failedLines(string(out)))
	}
	if sum.Tests == 0 {
		t.Errorf("conformance ran no test")
	}
	if sum.Disabled > 0 {
		t.Errorf("%d conformance tests disabled: not every category is enabled", sum.Disabled)
	}
	if n.proc.exited() {
		t.Errorf("imgmesh exited during the conformance run: %v", n.proc.err)
	}
}

// junitTotals are the counts on the junit.xml root.
type junitTotals struct {
	Tests    int `xml:"tests,attr"`
	Failures int `xml:"failures,attr"`
	Errors   int `xml:"errors,attr"`
	Skipped  int `xml:"skipped,attr"`
	Disabled int `xml:"disabled,attr"`
}

func readJunit(path string) (junitTotals, error) {
	var j junitTotals
	b, err := os.ReadFile(path)
	if err != nil {
		return j, err
	}
	return j, xml.Unmarshal(b, &j)
}

// failedLines picks the conformance program's failure lines.
func failedLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "fail") || strings.Contains(l, "error") || strings.Contains(l, "Fail") {
			keep = append(keep, l)
		}
	}
	return tailLines(strings.Join(keep, "\n"), 80)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
