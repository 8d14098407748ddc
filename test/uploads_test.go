package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestUploadSessionsWithinFileLimit: a node with a low open-file limit
// (ulimit -n 256) refuses upload sessions past a quarter of it with 429,
// instead of running out of files: it stays ready and serves pulls.
func TestUploadSessionsWithinFileLimit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	n := &imgmeshNode{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), dataDir: t.TempDir(), nofile: 256}
	n.args = []string{"serve", "--mesh=false", "--data-dir", n.dataDir, "--listen", n.addr,
		"--log-format", "json", "--upstream", "none"}
	n.start(t)
	c := httpClient(t)
	refused := 0
	for i := range 200 {
		r := mustDo(ctx, t, c, http.MethodPost, n.url("/v2/flood/app/blobs/uploads/"), nil)
		switch r.status {
		case http.StatusAccepted:
			if refused > 0 {
				t.Fatalf("session %d accepted after %d were refused", i, refused)
			}
		case http.StatusTooManyRequests:
			refused++
		default:
			t.Fatalf("session %d: %d %s; want 202, then 429", i, r.status, r.body)
		}
	}
	if refused == 0 || refused > 200-16 {
		t.Fatalf("%d of 200 sessions refused; want the ones past a quarter of 256 files", refused)
	}
	if r := mustDo(ctx, t, c, http.MethodGet, n.url("/readyz"), nil); r.status != http.StatusOK {
		t.Fatalf("/readyz after the flood: %d %s", r.status, r.body)
	}
	// Pulls still work: the store answers (404 for what it lacks, not 500).
	d := sha256Digest([]byte("nobody pushed this"))
	if r := mustDo(ctx, t, c, http.MethodGet, n.url("/v2/other/app/blobs/"+d), nil); r.status != http.StatusNotFound {
		t.Fatalf("blob GET after the flood: %d %s; want 404", r.status, r.body)
	}
}
