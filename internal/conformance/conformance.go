// Package conformance runs the OCI distribution-spec conformance program
// against a registry, with every category enabled, for the tests of the
// registry API and of the real binary.
package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Env enables every API and data category of the program: the stable
// defaults plus the optional upload cancel, digest headers, tag parameters
// on digest pushes and sparse manifests.
var Env = []string{
	"OCI_TLS=disabled",
	"OCI_REPO1=conformance/repo1",
	"OCI_REPO2=conformance/repo2",
	"OCI_VERSION=1.1",
	"OCI_LOG=warn",
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

// Binary finds the program: $IMGMESH_CONFORMANCE, bin/conformance at the
// module root (make installs it there), or PATH. Missing: the test is
// skipped, or fails when CI=true.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("IMGMESH_CONFORMANCE"); p != "" {
		return p
	}
	if dir, err := os.Getwd(); err == nil {
		for ; filepath.Dir(dir) != dir; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				if p := filepath.Join(dir, "bin", "conformance"); fileExists(p) {
					return p
				}
				break
			}
		}
	}
	if p, err := exec.LookPath("conformance"); err == nil {
		return p
	}
	msg := "OCI conformance program not found (make test installs it to bin/; or set IMGMESH_CONFORMANCE)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Result is what one run counted.
type Result struct {
	Tests, Passed, Failures, Errors, Skipped, Disabled int
	// NotPassing lists API and data categories that did not report Pass.
	NotPassing []string
}

// Run runs the program against registry ("host:port") and fails t unless
// every test and every category passed. $IMGMESH_CONFORMANCE_RESULTS keeps
// the reports (results.yaml, report.html, junit.xml, stdout.txt).
func Run(t testing.TB, registry string) Result {
	t.Helper()
	bin := Binary(t)
	results := t.TempDir()
	if keep := os.Getenv("IMGMESH_CONFORMANCE_RESULTS"); keep != "" {
		results = filepath.Join(keep, t.Name())
		if err := os.MkdirAll(results, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = results
	cmd.Env = append(append(os.Environ(), Env...), "OCI_REGISTRY="+registry, "OCI_RESULTS_DIR="+results)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	_ = os.WriteFile(filepath.Join(results, "stdout.txt"), stdout.Bytes(), 0o644)
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		t.Fatalf("run %s: %v\n%s", bin, runErr, stderr.String())
	}

	var r Result
	b, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err == nil {
		var j struct {
			Tests    int `xml:"tests,attr"`
			Failures int `xml:"failures,attr"`
			Errors   int `xml:"errors,attr"`
			Skipped  int `xml:"skipped,attr"`
			Disabled int `xml:"disabled,attr"`
		}
		err = xml.Unmarshal(b, &j)
		r = Result{Tests: j.Tests, Failures: j.Failures, Errors: j.Errors, Skipped: j.Skipped, Disabled: j.Disabled}
		r.Passed = r.Tests - r.Failures - r.Errors - r.Skipped - r.Disabled
	}
	if err != nil { // the program exits 0 when its config fails to load
		t.Fatalf("conformance wrote no readable junit.xml (%v); exit: %v\n%s", err, runErr, stdout.String())
	}
	r.NotPassing = notPassing(stdout.Bytes())
	t.Logf("OCI conformance: %d passed, %d failed, %d errors, %d skipped, %d disabled of %d",
		r.Passed, r.Failures, r.Errors, r.Skipped, r.Disabled, r.Tests)
	if runErr != nil || r.Tests == 0 || r.Passed != r.Tests || len(r.NotPassing) > 0 {
		t.Errorf("conformance did not fully pass (exit: %v); categories not passing: %v", runErr, r.NotPassing)
		for _, l := range strings.Split(stdout.String(), "\n") {
			if strings.Contains(l, ": FAIL") || strings.Contains(l, ": Error") || strings.Contains(l, ": Skip") || strings.HasPrefix(strings.TrimSpace(l), "- ") {
				t.Log(l)
			}
		}
		t.Logf("stderr:\n%s", stderr.String())
	}
	return r
}

// notPassing reads the "API conformance:" and "Data conformance:" sections
// of the program's summary and returns the categories not at Pass.
func notPassing(stdout []byte) []string {
	var out []string
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(stdout))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "API conformance:" || line == "Data conformance:":
			section = line
		case line == "":
			section = ""
		case section != "" && !strings.HasSuffix(line, " Pass"):
			out = append(out, section+" "+strings.TrimSpace(line))
		}
	}
	return out
}
