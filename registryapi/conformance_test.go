package registryapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// conformanceEnv enables every category of the conformance program:
// the stable defaults plus the optional upload cancel, digest headers,
// tag parameters on digest pushes and sparse manifests.
var conformanceEnv = []string{
	"OCI_TLS=disabled",
	"OCI_REPO1=conformance/repo1",
	"OCI_REPO2=conformance/repo2",
	"OCI_VERSION=1.1",
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

// conformanceBinary finds the conformance program: $IMGMESH_CONFORMANCE,
// bin/conformance at the module root, or PATH.
func conformanceBinary() (string, error) {
	if p := os.Getenv("IMGMESH_CONFORMANCE"); p != "" {
		return p, nil
	}
	if dir, err := os.Getwd(); err == nil {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, "bin", "conformance")
				if _, err := os.Stat(p); err == nil {
					return p, nil
				}
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return exec.LookPath("conformance")
}

var countRe = regexp.MustCompile(`^\s+(Pass|FAIL|Error|Skip|Disabled)\.*:\s+(\d+)$`)

// TestConformance runs the OCI distribution-spec conformance program with
// every category enabled against the in-process server and requires every
// test, API and data category to pass. $IMGMESH_CONFORMANCE_RESULTS keeps
// the reports (results.yaml, report.html, junit.xml, stdout.txt).
func TestConformance(t *testing.T) {
	bin, err := conformanceBinary()
	if err != nil {
		msg := "conformance program not found (set IMGMESH_CONFORMANCE or install it to bin/conformance)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	runConformance(t, bin, Options{})
}

// runConformance runs program bin against New(opts) (zero Source and Store:
// storeSource over a fresh memory store).
func runConformance(t *testing.T, bin string, opts Options) {
	t.Helper()
	ts := newTestServer(t, func(o *Options) {
		if opts.Source != nil {
			o.Source, o.Store = opts.Source, opts.Store
		}
	})
	u, _ := url.Parse(ts.URL)
	results := t.TempDir()
	if keep := os.Getenv("IMGMESH_CONFORMANCE_RESULTS"); keep != "" { // kept for inspection
		results = filepath.Join(keep, t.Name())
		if err := os.MkdirAll(results, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir = results
	cmd.Env = append(os.Environ(), conformanceEnv...)
	cmd.Env = append(cmd.Env, "OCI_REGISTRY="+u.Host, "OCI_RESULTS_DIR="+results, "OCI_LOG=warn")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	_ = os.WriteFile(filepath.Join(results, "stdout.txt"), stdout.Bytes(), 0o644)

	counts := map[string]int{}
	var notPass []string
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(stdout.Bytes()))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "OCI Conformance Result:"):
			section = "counts"
		case line == "API conformance:" || line == "Data conformance:":
			section = line
		case line == "":
			if section != "counts" {
				section = ""
			}
		case section == "counts":
			if m := countRe.FindStringSubmatch(line); m != nil {
				counts[m[1]], _ = strconv.Atoi(m[2])
			}
		case section != "":
			if !strings.HasSuffix(line, " Pass") {
				notPass = append(notPass, section+" "+strings.TrimSpace(line))
			}
		}
	}
	t.Logf("conformance: pass=%d fail=%d error=%d skip=%d disabled=%d",
		counts["Pass"], counts["FAIL"], counts["Error"], counts["Skip"], counts["Disabled"])
	failed := counts["FAIL"] > 0 || counts["Error"] > 0 || counts["Skip"] > 0 || counts["Disabled"] > 0 ||
		counts["Pass"] == 0 || len(notPass) > 0
	var exitErr *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exitErr) {
		t.Fatalf("run %s: %v\n%s", bin, runErr, stderr.String())
	}
	if runErr != nil || failed {
		t.Errorf("conformance did not fully pass (exit: %v); categories not passing: %v", runErr, notPass)
		for _, l := range strings.Split(stdout.String(), "\n") {
			if strings.Contains(l, ": FAIL") || strings.Contains(l, ": Error") || strings.Contains(l, ": Skip") || strings.HasPrefix(strings.TrimSpace(l), "- ") {
				t.Log(l)
			}
		}
		t.Logf("stderr:\n%s", stderr.String())
	}
}
