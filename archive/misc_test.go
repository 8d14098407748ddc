package archive

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/registryapi"
)

// TestProgress: lines are drawn at most every 2 s off a terminal, redrawn
// in place on one, and the last line says 100%.
func TestProgress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		tty       bool
		wantLines int
	}{
		{name: "pipe", tty: false, wantLines: 3}, // start, +3s, finish
		{name: "terminal", tty: true, wantLines: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var buf bytes.Buffer
			now := time.Unix(1000, 0)
			p := NewProgress(&buf, "import", tc.tty)
			p.now = func() time.Time { return now }
			p.SetTotal(4096)
			p.Add(1024) // too soon to draw off a terminal
			now = now.Add(3 * time.Second)
			p.Add(1024)
			p.Add(2048)
			p.Finish()
			out := buf.String()
			if got := strings.Count(out, "\n"); got != tc.wantLines {
				t.Errorf("%d lines, want %d:\n%q", got, tc.wantLines, out)
			}
			if tc.tty != strings.Contains(out, "\r") {
				t.Errorf("terminal %v, output %q", tc.tty, out)
			}
			lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(out, "\r", "\n")), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, "100%") || !strings.Contains(last, "4.0 KiB / 4.0 KiB") {
				t.Errorf("last line %q, want 100%% of 4.0 KiB", last)
			}
		})
	}
	var nilProgress *Progress
	nilProgress.SetTotal(1) // a nil Progress shows nothing and does not panic
	nilProgress.Add(1)
	nilProgress.Finish()
}

// TestImportProgress: the progress of a real import ends at its total.
func TestImportProgress(t *testing.T) {
	t.Parallel()
	tn := startTestNode(t)
	dir := writeLayout(t, ociImage(t, 2, 256<<10, "amd64"), map[string]string{AnnotationImageName: "x.io/a:1"}, nil, nil)
	var buf bytes.Buffer
	res, err := Import(t.Context(), dir, ImportOptions{Node: tn.url, Progress: NewProgress(&buf, "import", false)})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "100%") || res.Bytes < 512<<10 {
		t.Errorf("last progress line %q for %d bytes", last, res.Bytes)
	}
}

// TestNSTransport: requests to the node get ?ns=, once; others do not.
func TestNSTransport(t *testing.T) {
	t.Parallel()
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.URL.RawQuery)
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: nsTransport{ns: "docker.io", host: u.Host, next: tr}}
	other := &http.Client{Transport: nsTransport{ns: "docker.io", host: "elsewhere:5000", next: tr}}
	for _, tc := range []struct {
		c    *http.Client
		path string
		want string
	}{
		{c, "/v2/library/nginx/manifests/1.27", "ns=docker.io"},
		{c, "/v2/library/nginx/blobs/uploads/x?digest=sha256%3Aab", "digest=sha256%3Aab&ns=docker.io"},
		{c, "/v2/x/blobs/uploads/y?ns=ghcr.io", "ns=ghcr.io"},
		{other, "/v2/", ""},
	} {
		got = nil
		resp, err := tc.c.Get(srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if len(got) != 1 || got[0] != tc.want {
			t.Errorf("%s: query %v, want %q", tc.path, got, tc.want)
		}
	}
}

// TestBasicAuthNode: a node behind basic auth (a technician's laptop in
// exposed mode) takes an import and serves an export when the node URL
// carries user:password, and refuses both without; a pull-only account
// exports, and its import is refused as such.
func TestBasicAuthNode(t *testing.T) {
	t.Parallel()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users, err := registryapi.ParseHtpasswd(strings.NewReader("tech:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	pullers, err := registryapi.ParseHtpasswd(strings.NewReader("device:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	auth, err := registryapi.NewAuthenticator(registryapi.AuthOptions{Users: users, Pullers: pullers})
	if err != nil {
		t.Fatal(err)
	}
	store := blobstore.NewMemory()
	n := node.New(node.Options{Store: store})
	h := registryapi.New(registryapi.Options{Source: n, Store: store})
	srv := httptest.NewServer(auth.Wrap(h))
	t.Cleanup(func() {
		srv.Close()
		h.(*registryapi.Server).Close()
		_ = n.Close()
	})
	dir := writeLayout(t, ociImage(t, 1, 4<<10, "amd64"), map[string]string{AnnotationImageName: "x.io/a:1"}, nil, nil)
	withCreds := strings.Replace(srv.URL, "http://", "http://tech:s3cret@", 1)
	out := filepath.Join(t.TempDir(), "a.tar")

	wrong := strings.Replace(srv.URL, "http://", "http://tech:guess@", 1)
	for _, tc := range []struct{ node, want string }{{srv.URL, "wants a login"}, {wrong, "refused the login"}} {
		if _, err := Import(t.Context(), dir, ImportOptions{Node: tc.node}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("import to %s: %v, want %q", tc.node, err, tc.want)
		}
		if _, err := Export(t.Context(), []string{"x.io/a:1"}, out, ExportOptions{Node: tc.node}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("export from %s: %v, want %q", tc.node, err, tc.want)
		}
	}
	// A pull-only account is told so on import; it may export.
	puller := strings.Replace(srv.URL, "http://", "http://device:s3cret@", 1)
	if _, err := Import(t.Context(), dir, ImportOptions{Node: puller}); err == nil || !strings.Contains(err.Error(), "pull-only") {
		t.Errorf("import with a pull-only account: %v, want it named", err)
	}
	if _, err := Import(t.Context(), dir, ImportOptions{Node: withCreds}); err != nil {
		t.Fatalf("import with credentials: %v", err)
	}
	if _, err := Export(t.Context(), []string{"x.io/a:1"}, out, ExportOptions{Node: puller}); err != nil {
		t.Fatalf("export with a pull-only account: %v", err)
	}
	if _, err := Export(t.Context(), []string{"x.io/a:1"}, out, ExportOptions{Node: withCreds}); err != nil {
		t.Fatalf("export with credentials: %v", err)
	}
}
