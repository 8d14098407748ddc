package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imgmesh/imgmesh/admin"
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

// orderNode is a node that takes one order and answers its n-th status
// poll with members(n), or 502 when that returns nil (the node is away).
// It returns the node and how many polls it had.
func orderNode(t *testing.T, id string, members func(n int32) []prefetch.MemberStatus) (*httptest.Server, *atomic.Int32) {
	var gets atomic.Int32
	order := prefetch.Order{ID: id, Refs: []string{"line/app:v1"}, Created: time.Now(), Deadline: time.Now().Add(time.Hour)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodPost {
			w.WriteHeader(http.StatusCreated)
			_ = json.NewEncoder(w).Encode(admin.PrefetchCreated{ID: order.ID, Order: order})
			return
		}
		ms := members(gets.Add(1))
		if ms == nil {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		_ = json.NewEncoder(w).Encode(prefetch.Status{Order: order, Members: ms})
	}))
	t.Cleanup(srv.Close)
	return srv, &gets
}

// TestPrefetchSaysWhenTheNodeStopsAnswering: the node that took the order
// answers once (a device pulling, another unreachable), then goes away:
// the progress marks the unreachable device, and the command says in one
// line that the node does not answer and that it keeps waiting, well
// before its deadline.
func TestPrefetchSaysWhenTheNodeStopsAnswering(t *testing.T) {
	srv, _ := orderNode(t, "o1", func(n int32) []prefetch.MemberStatus {
		if n > 1 {
			return nil // the node is gone
		}
		return []prefetch.MemberStatus{
			{Name: "dev1", Report: &prefetch.Report{State: prefetch.Pulling, Done: 1, Total: 4}},
			{Name: "dev2", Unreachable: true},
		}
	})
	code, out, errOut := runCLI(t, nil, "prefetch", "--node", srv.URL, "line/app:v1", "--timeout", "1s", "--poll", "50ms")
	if code == 0 {
		t.Fatalf("exit 0 with the node gone\n%s%s", out, errOut)
	}
	if !regexp.MustCompile(`(?m)^dev2 +waiting  \(unreachable\)$`).MatchString(out) {
		t.Errorf("progress does not mark dev2 unreachable:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "still waiting until") || !strings.Contains(lines[1], "deadline passed") {
		t.Errorf("stderr %q: want one line saying the node does not answer and it keeps waiting, then the deadline", errOut)
	}
}

// TestPrefetchSaysWhenTheNodeAnswersAgain: the node misses a few polls,
// then answers with every device complete: the command says it lost the
// node, then that it answers again, and exits 0.
func TestPrefetchSaysWhenTheNodeAnswersAgain(t *testing.T) {
	srv, _ := orderNode(t, "o2", func(n int32) []prefetch.MemberStatus {
		switch {
		case n == 1:
			return []prefetch.MemberStatus{{Name: "dev1", Report: &prefetch.Report{State: prefetch.Pulling, Done: 1, Total: 4}}}
		case n <= 1+warnAfterFails:
			return nil // restarting
		}
		return []prefetch.MemberStatus{{Name: "dev1", Report: &prefetch.Report{State: prefetch.Complete, Done: 4, Total: 4}}}
	})
	code, out, errOut := runCLI(t, nil, "prefetch", "--node", srv.URL, "line/app:v1", "--timeout", "1m", "--poll", "20ms")
	if code != 0 || !strings.Contains(out, "all 1 device(s) complete") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "still waiting until") || !strings.Contains(lines[1], "answers again") {
		t.Errorf("stderr %q: want a line that the node does not answer, then one that it answers again", errOut)
	}
}

// TestPrefetchWaitsForADeviceThatRetries: a device whose pull failed on a
// hiccup and that retries before the deadline is waited for (the command
// exits 0 once it completes); a device that failed because the image is
// not found is reported at once, though it too retries.
func TestPrefetchWaitsForADeviceThatRetries(t *testing.T) {
	for _, missing := range []bool{false, true} {
		failed := &prefetch.Report{State: prefetch.Failed, Error: "upstream unavailable", Attempts: 1,
			RetryAt: time.Now().Add(time.Minute), Lasting: missing}
		srv, gets := orderNode(t, "o3", func(n int32) []prefetch.MemberStatus {
			rep := failed
			if n > 3 {
				rep = &prefetch.Report{State: prefetch.Complete, Done: 4, Total: 4, Attempts: 2}
			}
			return []prefetch.MemberStatus{
				{Name: "dev1", Report: &prefetch.Report{State: prefetch.Complete, Done: 4, Total: 4}},
				{Name: "dev2", Report: rep}}
		})
		code, out, errOut := runCLI(t, nil, "prefetch", "--node", srv.URL, "line/app:v1", "--timeout", "1m", "--poll", "20ms")
		if missing {
			if code == 0 || gets.Load() != 1 || !regexp.MustCompile(`(?m)^dev2 +failed .*upstream unavailable`).MatchString(out) {
				t.Errorf("image missing on dev2: exit %d after %d polls, want non-zero after 1 with dev2's line in the table\n%s%s", code, gets.Load(), out, errOut)
			}
			continue
		}
		if code != 0 || !strings.Contains(out, "all 2 device(s) complete") {
			t.Errorf("dev2 retrying: exit %d, want 0 once it completes\n%s%s", code, out, errOut)
		}
		if !regexp.MustCompile(`(?m)^dev2 +failed .*\(retrying at \d\d:\d\d:\d\d\)$`).MatchString(out) {
			t.Errorf("the progress does not say dev2 retries:\n%s", out)
		}
	}
}
