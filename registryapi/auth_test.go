package registryapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/imgmesh/imgmesh/blobstore"
)

// bcryptLine is an htpasswd line for user at bcrypt cost (4, the minimum,
// keeps tests fast; the check is the same at any cost).
func bcryptLine(t testing.TB, user, password, prefix string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return user + ":" + prefix + string(h)[4:] // swap the $2a$ Go writes for prefix
}

// authServer is the registry API and a stand-in for the admin API behind an
// Authenticator, on a real HTTP server.
type authServer struct {
	*httptest.Server
	auth *Authenticator
	now  *time.Time
	mu   *sync.Mutex
}

func newAuthServer(t *testing.T, htpasswd string) *authServer {
	t.Helper()
	return newAuthServerPullers(t, htpasswd, "")
}

// newAuthServerPullers also has the pull-only accounts of pullers (none if
// empty).
func newAuthServerPullers(t *testing.T, htpasswd, pullers string) *authServer {
	t.Helper()
	load := func(name, content string) *Htpasswd {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		h, err := LoadHtpasswd(path)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	users := load("htpasswd", htpasswd)
	var pull *Htpasswd
	if pullers != "" {
		pull = load("pull-htpasswd", pullers)
	}
	var mu sync.Mutex
	now := time.Now()
	a, err := NewAuthenticator(AuthOptions{Users: users, Pullers: pull, Queries: []string{"/api/v1/images/missing"}, now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}})
	if err != nil {
		t.Fatal(err)
	}
	store := blobstore.NewMemory()
	api := New(Options{Source: storeSource{store}, Store: store})
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("{}")) })
	mux.Handle("/", api)
	srv := httptest.NewServer(a.Wrap(mux))
	t.Cleanup(func() {
		srv.Close()
		_ = api.(*Server).Close()
	})
	return &authServer{Server: srv, auth: a, now: &now, mu: &mu}
}

func (s *authServer) advance(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	*s.now = s.now.Add(d)
}

func basic(user, pass string) string {
	req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
	req.SetBasicAuth(user, pass)
	return req.Header.Get("Authorization")
}

func TestBasicAuth(t *testing.T) {
	t.Parallel()
	htpasswd := "# technicians\n\n" +
		bcryptLine(t, "alice", "s3cret", "$2y$", bcrypt.MinCost) + "\n" +
		bcryptLine(t, "bob", "hunter2", "$2b$", bcrypt.MinCost) + "\n"
	ts := newAuthServer(t, htpasswd)
	good := basic("alice", "s3cret")
	long := strings.Repeat("x", 72)
	ts2 := newAuthServer(t, bcryptLine(t, "carol", long, "$2a$", bcrypt.MinCost))

	for _, tc := range []struct {
		name   string
		url    string
		method string
		auth   string
		status int
	}{
		{name: "healthz is open", url: ts.URL + "/healthz", auth: "", status: http.StatusOK},
		{name: "readyz is open", url: ts.URL + "/readyz", auth: "", status: http.StatusOK},
		{name: "missing header", url: ts.URL + "/v2/", auth: "", status: http.StatusUnauthorized},
		{name: "missing header HEAD", url: ts.URL + "/v2/", method: http.MethodHead, auth: "", status: http.StatusUnauthorized},
		{name: "good credentials", url: ts.URL + "/v2/", auth: good, status: http.StatusOK},
		{name: "second user", url: ts.URL + "/v2/", auth: basic("bob", "hunter2"), status: http.StatusOK},
		{name: "bad password", url: ts.URL + "/v2/", auth: basic("alice", "s3cre"), status: http.StatusUnauthorized},
		{name: "other user's password", url: ts.URL + "/v2/", auth: basic("alice", "hunter2"), status: http.StatusUnauthorized},
		{name: "unknown user", url: ts.URL + "/v2/", auth: basic("mallory", "s3cret"), status: http.StatusUnauthorized},
		{name: "user name prefix", url: ts.URL + "/v2/", auth: basic("alic", "s3cret"), status: http.StatusUnauthorized},
		{name: "empty credentials", url: ts.URL + "/v2/", auth: basic("", ""), status: http.StatusUnauthorized},
		{name: "not base64", url: ts.URL + "/v2/", auth: "Basic !!!", status: http.StatusUnauthorized},
		{name: "bearer token", url: ts.URL + "/v2/", auth: "Bearer abc", status: http.StatusUnauthorized},
		{name: "manifest without auth", url: ts.URL + "/v2/app/manifests/v1", auth: "", status: http.StatusUnauthorized},
		{name: "manifest with auth reaches the API", url: ts.URL + "/v2/app/manifests/v1", auth: good, status: http.StatusNotFound},
		{name: "metrics need auth", url: ts.URL + "/metrics", auth: "", status: http.StatusUnauthorized},
		{name: "metrics with auth", url: ts.URL + "/metrics", auth: good, status: http.StatusOK},
		{name: "admin API needs auth", url: ts.URL + "/api/v1/status", auth: "", status: http.StatusUnauthorized},
		{name: "admin API with auth", url: ts.URL + "/api/v1/status", auth: good, status: http.StatusOK},
		{name: "unknown path needs auth", url: ts.URL + "/other", auth: "", status: http.StatusUnauthorized},
		{name: "72-byte password", url: ts2.URL + "/v2/", auth: basic("carol", long), status: http.StatusOK},
		{name: "longer password with the same 72 bytes", url: ts2.URL + "/v2/", auth: basic("carol", long+"y"), status: http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			r := do(t, method, tc.url, nil, hdr...)
			if r.status != tc.status {
				t.Fatalf("%s %s: status %d (%s), want %d", method, tc.url, r.status, r.body, tc.status)
			}
			if tc.status != http.StatusUnauthorized {
				return
			}
			if got := r.header.Get("WWW-Authenticate"); got != `Basic realm="imgmesh"` {
				t.Errorf("WWW-Authenticate %q, want Basic realm=\"imgmesh\"", got)
			}
			if method == http.MethodHead {
				return
			}
			want(t, r, http.StatusUnauthorized, string(CodeUnauthorized))
		})
	}
}

// TestBasicAuthPushPull: with credentials the whole API works through the
// middleware: a blob pushed is pulled back.
func TestBasicAuthPushPull(t *testing.T) {
	t.Parallel()
	ts := newAuthServer(t, bcryptLine(t, "ci", "pw", "$2y$", bcrypt.MinCost))
	auth := basic("ci", "pw")
	blob := []byte("a layer")
	d := sha256.Sum256(blob)
	dg := fmt.Sprintf("sha256:%x", d)
	r := do(t, http.MethodPost, ts.URL+"/v2/app/blobs/uploads/?digest="+dg, blob, "Authorization", auth)
	want(t, r, http.StatusCreated, "")
	want(t, do(t, http.MethodGet, ts.URL+"/v2/app/blobs/"+dg, nil), http.StatusUnauthorized, string(CodeUnauthorized))
	r = do(t, http.MethodGet, ts.URL+"/v2/app/blobs/"+dg, nil, "Authorization", auth)
	if r.status != http.StatusOK || string(r.body) != string(blob) {
		t.Fatalf("pull with credentials: %d %q", r.status, r.body)
	}
}

// TestPullOnlyAccounts: an account of Pullers reads everything a full
// account reads (and POSTs to a query path), and is denied every write
// (403 DENIED, nothing stored); a full account still pushes, and a wrong
// puller password is a 401.
func TestPullOnlyAccounts(t *testing.T) {
	t.Parallel()
	ts := newAuthServerPullers(t, bcryptLine(t, "tech", "admin-pw", "$2y$", bcrypt.MinCost),
		bcryptLine(t, "device", "pull-pw", "$2y$", bcrypt.MinCost))
	tech, device := basic("tech", "admin-pw"), basic("device", "pull-pw")
	blob := []byte("a layer")
	dg := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))

	r := do(t, http.MethodPost, ts.URL+"/v2/app/blobs/uploads/?digest="+dg, blob, "Authorization", device)
	want(t, r, http.StatusForbidden, string(CodeDenied))
	if !strings.Contains(string(r.body), "may only pull") {
		t.Errorf("denial %s does not say the account may only pull", r.body)
	}
	want(t, do(t, http.MethodHead, ts.URL+"/v2/app/blobs/"+dg, nil, "Authorization", device), http.StatusNotFound, "")
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		want(t, do(t, m, ts.URL+"/api/v1/images/rm", []byte("{}"), "Authorization", device), http.StatusForbidden, string(CodeDenied))
	}
	want(t, do(t, http.MethodGet, ts.URL+"/v2/", nil, "Authorization", basic("device", "wrong")), http.StatusUnauthorized, string(CodeUnauthorized))
	// A POST that only asks a question is a read.
	want(t, do(t, http.MethodPost, ts.URL+"/api/v1/images/missing", []byte("{}"), "Authorization", device), http.StatusOK, "")
	want(t, do(t, http.MethodPut, ts.URL+"/api/v1/images/missing", []byte("{}"), "Authorization", device), http.StatusForbidden, string(CodeDenied))

	want(t, do(t, http.MethodPost, ts.URL+"/v2/app/blobs/uploads/?digest="+dg, blob, "Authorization", tech), http.StatusCreated, "")
	for _, path := range []string{"/v2/", "/v2/app/blobs/" + dg, "/api/v1/status", "/metrics"} {
		if r := do(t, http.MethodGet, ts.URL+path, nil, "Authorization", device); r.status != http.StatusOK {
			t.Errorf("GET %s as the pull-only account: %d %s", path, r.status, r.body)
		}
	}
	want(t, do(t, http.MethodDelete, ts.URL+"/v2/app/blobs/"+dg, nil, "Authorization", device), http.StatusForbidden, string(CodeDenied))
	if r := do(t, http.MethodGet, ts.URL+"/v2/app/blobs/"+dg, nil, "Authorization", device); string(r.body) != string(blob) {
		t.Errorf("after a denied DELETE the blob answers %d %q", r.status, r.body)
	}
}

func TestPullOnlyAccountNamedTwice(t *testing.T) {
	t.Parallel()
	users, err := ParseHtpasswd(strings.NewReader(bcryptLine(t, "tech", "a", "$2y$", bcrypt.MinCost)))
	if err != nil {
		t.Fatal(err)
	}
	pullers, err := ParseHtpasswd(strings.NewReader(bcryptLine(t, "tech", "b", "$2y$", bcrypt.MinCost)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewAuthenticator(AuthOptions{Users: users, Pullers: pullers})
	if !errors.Is(err, ErrHtpasswd) || !strings.Contains(err.Error(), `"tech"`) {
		t.Fatalf("a name in both files: %v, want an htpasswd error naming it", err)
	}
}

// TestAuthCache: a verified pair skips bcrypt for a minute; a wrong
// password never does.
func TestAuthCache(t *testing.T) {
	t.Parallel()
	ts := newAuthServer(t, bcryptLine(t, "alice", "s3cret", "$2y$", bcrypt.MinCost))
	ctx := context.Background()
	check := func(pass string, want bool, wantRuns int64) {
		t.Helper()
		access, err := ts.auth.Check(ctx, "alice", pass)
		if ok := access == FullAccess; err != nil || ok != want {
			t.Fatalf("Check(alice, %q) = %v, %v; want full access %v", pass, access, err, want)
		}
		if got := ts.auth.bcrypts.Load(); got != wantRuns {
			t.Fatalf("after Check(alice, %q): %d bcrypt runs, want %d", pass, got, wantRuns)
		}
	}
	check("s3cret", true, 1)
	check("s3cret", true, 1) // cached
	check("wrong", false, 2)
	check("wrong", false, 3) // failures are never cached
	ts.advance(authCacheTTL + time.Second)
	check("s3cret", true, 4) // expired: bcrypt again
	check("s3cret", true, 4)

	// The cache stays bounded whatever is put in it.
	for i := range 3 * authCacheSize {
		ts.auth.remember(sha256.Sum256(fmt.Appendf(nil, "%d", i)), cached{})
	}
	ts.auth.mu.Lock()
	n := len(ts.auth.cache)
	ts.auth.mu.Unlock()
	if n > authCacheSize {
		t.Fatalf("cache holds %d entries, bound is %d", n, authCacheSize)
	}
}

func TestParseHtpasswd(t *testing.T) {
	t.Parallel()
	good := bcryptLine(t, "alice", "pw", "$2y$", bcrypt.MinCost)
	for _, tc := range []struct {
		name    string
		content string
		users   int
		msg     string // part of the error; "" = valid
	}{
		{name: "one bcrypt user", content: good + "\n", users: 1},
		{name: "comments, blanks, three prefixes", content: "# x\n\n" + good + "\n" +
			bcryptLine(t, "bob", "pw", "$2a$", bcrypt.MinCost) + "\n  \n" +
			bcryptLine(t, "carol", "pw", "$2b$", bcrypt.MinCost), users: 3},
		{name: "empty file", content: "", msg: "no users"},
		{name: "comments only", content: "# nobody\n", msg: "no users"},
		{name: "no colon", content: "alice\n", msg: "line 1: want USER:HASH"},
		{name: "empty user", content: ":" + strings.SplitN(good, ":", 2)[1], msg: "empty user name"},
		{name: "user twice", content: good + "\n" + good, msg: "line 2: user \"alice\" listed twice"},
		{name: "apr1 md5", content: "# a\nalice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n", msg: "line 2: user \"alice\": not a bcrypt hash"},
		{name: "sha1", content: "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", msg: "not a bcrypt hash"},
		{name: "plain text", content: "alice:password\n", msg: "not a bcrypt hash"},
		{name: "crypt", content: "alice:rl0BEtCKjAfVA\n", msg: "not a bcrypt hash"},
		{name: "truncated bcrypt", content: "alice:$2y$10$short\n", msg: "bad bcrypt hash"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, err := ParseHtpasswd(strings.NewReader(tc.content))
			if tc.msg == "" {
				if err != nil || h.Len() != tc.users {
					t.Fatalf("ParseHtpasswd: %v users, %v; want %d", h, err, tc.users)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrHtpasswd) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ParseHtpasswd: %v; want an ErrHtpasswd saying %q", err, tc.msg)
			}
		})
	}
	if _, err := LoadHtpasswd(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("LoadHtpasswd of a missing file: %v, want os.ErrNotExist", err)
	}
	if _, err := NewAuthenticator(AuthOptions{}); !errors.Is(err, ErrHtpasswd) {
		t.Errorf("NewAuthenticator without users: %v, want ErrHtpasswd", err)
	}
}

// BenchmarkAuthCheck measures a request's auth cost: a bcrypt run at the
// cost htpasswd -B writes (5) and at Go's default (10), and a cache hit.
func BenchmarkAuthCheck(b *testing.B) {
	for _, cost := range []int{5, bcrypt.DefaultCost} {
		users, err := ParseHtpasswd(strings.NewReader(bcryptLine(b, "alice", "s3cret", "$2y$", cost)))
		if err != nil {
			b.Fatal(err)
		}
		a, err := NewAuthenticator(AuthOptions{Users: users})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("bcrypt-cost-%d", cost), func(b *testing.B) {
			for b.Loop() {
				if access, _ := a.Check(b.Context(), "alice", "wrong"); access != NoAccess {
					b.Fatal("wrong password accepted")
				}
			}
		})
		b.Run(fmt.Sprintf("cached-cost-%d", cost), func(b *testing.B) {
			for b.Loop() {
				if access, _ := a.Check(b.Context(), "alice", "s3cret"); access != FullAccess {
					b.Fatal("good password refused")
				}
			}
		})
	}
}
