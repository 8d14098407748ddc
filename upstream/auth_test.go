package upstream_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/imgmesh/imgmesh/upstream"
)

// tokenServer is a Docker-style token service; guard makes an origin
// demand its tokens, answering 401 with a Bearer challenge otherwise.
type tokenServer struct {
	srv       *httptest.Server
	wantBasic string // Authorization the token request must carry ("": anonymous)
	mu        sync.Mutex
	issued    map[string]bool
	asked     []tokenRequest
}

type tokenRequest struct{ scope, service, auth string }

func newTokenServer(t *testing.T, wantBasic string) *tokenServer {
	ts := &tokenServer{wantBasic: wantBasic, issued: map[string]bool{}}
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		q := r.URL.Query()
		ts.asked = append(ts.asked, tokenRequest{q.Get("scope"), q.Get("service"), r.Header.Get("Authorization")})
		if r.Header.Get("Authorization") != ts.wantBasic {
			http.Error(w, "bad credentials", http.StatusUnauthorized)
			return
		}
		tok := fmt.Sprintf("tok-%d", len(ts.asked))
		ts.issued[tok] = true
		_ = json.NewEncoder(w).Encode(map[string]string{"token": tok})
	}))
	t.Cleanup(ts.srv.Close)
	return ts
}

func (ts *tokenServer) requests() []tokenRequest {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]tokenRequest(nil), ts.asked...)
}

func (ts *tokenServer) revoke() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	clear(ts.issued)
}

func (ts *tokenServer) guard(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
	ts.mu.Lock()
	ok := ts.issued[strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")]
	ts.mu.Unlock()
	if ok {
		return false
	}
	// The realm is named "localhost": ggcr refuses loopback IP realms
	// that are not the registry's own host.
	realm := strings.Replace(ts.srv.URL, "127.0.0.1", "localhost", 1) + "/token"
	challenge := fmt.Sprintf(`Bearer realm=%q,service="imgmesh-test"`, realm)
	if repo, _, found := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v2/"), "/manifests/"); found {
		challenge += fmt.Sprintf(`,scope="repository:%s:pull"`, repo)
	}
	w.Header().Set("WWW-Authenticate", challenge)
	http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
	return true
}

func basicAuth(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// writeDockerConfig writes a config.json holding user:pass under key.
func writeDockerConfig(t *testing.T, key, user, pass string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.json")
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
	b, _ := json.Marshal(map[string]any{"auths": map[string]any{key: map[string]string{"auth": auth}}})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBearerTokenFlow(t *testing.T) {
	for _, tc := range []struct {
		name  string
		creds bool
	}{
		{name: "anonymous"},
		{name: "credentials from config.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOrigin(t)
			d, data := layerOf(t, o, "library/app", 2048)
			o.pushImage(t, "library/other", "v1", randomImage(t, 128, 1))
			opts := upstream.Options{Registries: []upstream.Registry{{Name: "hub.test", URL: o.srv.URL}}}
			wantAuth := ""
			if tc.creds {
				opts.DockerConfig = writeDockerConfig(t, "hub.test", "alice", "s3cret")
				wantAuth = basicAuth("alice", "s3cret")
			}
			ts := newTokenServer(t, wantAuth)
			o.setIntercept(ts.guard)
			c := newClient(t, opts)

			if _, err := c.Manifest(bg, "hub.test", "library/app", "v1", false); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Manifest(bg, "hub.test", "library/app", "v1", true); err != nil {
				t.Fatal(err)
			}
			rc, _, err := c.Blob(bg, "hub.test", "library/app", d, 100)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(readAll(t, rc), data[100:]) {
				t.Error("blob bytes differ")
			}
			if _, err := c.StatBlob(bg, "hub.test", "library/app", d); err != nil {
				t.Fatal(err)
			}
			if tags, err := c.Tags(bg, "hub.test", "library/app"); err != nil || len(tags) != 1 {
				t.Fatalf("Tags = %v, %v", tags, err)
			}
			asked := ts.requests()
			if len(asked) != 1 {
				t.Fatalf("%d token requests for five calls, want 1: %+v", len(asked), asked)
			}
			if want := (tokenRequest{"repository:library/app:pull", "imgmesh-test", wantAuth}); asked[0] != want {
				t.Errorf("token request %+v, want %+v", asked[0], want)
			}
			for _, s := range o.requests() {
				if s.path != "/v2/" && s.header.Get("Authorization") != "Bearer tok-1" {
					t.Errorf("%s %s carried %q", s.method, s.path, s.header.Get("Authorization"))
				}
			}

			// Another repository gets its own pull scope.
			if _, err := c.Manifest(bg, "hub.test", "library/other", "v1", false); err != nil {
				t.Fatal(err)
			}
			if asked = ts.requests(); len(asked) != 2 || asked[1].scope != "repository:library/other:pull" {
				t.Fatalf("token requests %+v", asked)
			}

			// Expired tokens: the next call fetches a new one and succeeds.
			ts.revoke()
			if _, err := c.Manifest(bg, "hub.test", "library/app", "v1", false); err != nil {
				t.Fatal(err)
			}
			if n := len(ts.requests()); n != 3 {
				t.Errorf("%d token requests after expiry, want 3", n)
			}
		})
	}
}

func TestOneTokenDanceForConcurrentCalls(t *testing.T) {
	o := newOrigin(t)
	o.pushImage(t, "app", "v1", randomImage(t, 128, 1))
	ts := newTokenServer(t, "")
	o.setIntercept(ts.guard)
	c := originClient(t, o, "hub.test")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := c.Manifest(bg, "hub.test", "app", "v1", false)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	pings := 0
	for _, s := range o.requests() {
		if s.path == "/v2/" {
			pings++
		}
	}
	if n := len(ts.requests()); n != 1 || pings != 1 {
		t.Errorf("%d token requests and %d pings, want one of each", n, pings)
	}
}

func TestAuthDemandedLaterRedoesHandshake(t *testing.T) {
	o := newOrigin(t)
	o.pushImage(t, "app", "v1", randomImage(t, 128, 1))
	c := originClient(t, o, "hub.test")
	if _, err := c.Manifest(bg, "hub.test", "app", "v1", false); err != nil {
		t.Fatal(err)
	}
	ts := newTokenServer(t, "")
	o.setIntercept(ts.guard) // the origin starts demanding tokens
	if _, err := c.Manifest(bg, "hub.test", "app", "v1", false); err != nil {
		t.Fatalf("after auth was switched on: %v", err)
	}
	if n := len(ts.requests()); n != 1 {
		t.Errorf("%d token requests, want 1", n)
	}
}

func TestBasicCredentials(t *testing.T) {
	o := newOrigin(t)
	d, data := layerOf(t, o, "app", 4096)
	storage := newOrigin(t) // blob storage on another host:port
	want := basicAuth("alice", "s3cret")
	o.setIntercept(func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
		if r.Header.Get("Authorization") != want {
			w.Header().Set("WWW-Authenticate", `Basic realm="plant"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		if strings.Contains(r.URL.Path, "/blobs/") {
			storage.setIntercept(func(w http.ResponseWriter, _ *http.Request, _ http.Handler) bool {
				w.Header().Set("Content-Length", fmt.Sprint(len(data)))
				_, _ = w.Write(data)
				return true
			})
			http.Redirect(w, r, storage.srv.URL+"/bucket/"+d.Encoded(), http.StatusTemporaryRedirect)
			return true
		}
		return false
	})
	for _, tc := range []struct {
		name, ns, key, pass string
		wantErr             error
	}{
		{name: "credentials under the registry name", ns: "plant.local:5000", key: "plant.local:5000", pass: "s3cret"},
		{name: "Docker Hub's config key", ns: "docker.io", key: "https://index.docker.io/v1/", pass: "s3cret"},
		{name: "wrong password", ns: "plant.local:5000", key: "plant.local:5000", pass: "guess", wantErr: upstream.ErrUnavailable},
		{name: "credentials for another name", ns: "plant.local:5000", key: "other.test", pass: "s3cret", wantErr: upstream.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o.reset()
			c := newClient(t, upstream.Options{
				Registries:   []upstream.Registry{{Name: tc.ns, URL: o.srv.URL}},
				DockerConfig: writeDockerConfig(t, tc.key, "alice", tc.pass),
			})
			_, err := c.Manifest(bg, tc.ns, "app", "v1", false)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Manifest: %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				if !strings.Contains(err.Error(), "401") {
					t.Errorf("error %q does not say 401", err)
				}
				return
			}
			rc, total, err := c.Blob(bg, tc.ns, "app", d, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, rc); !bytes.Equal(got, data) || total != int64(len(data)) {
				t.Errorf("redirected blob: %d bytes, total %d; want %d", len(got), total, len(data))
			}
			sr := storage.requests()
			if len(sr) == 0 {
				t.Fatal("the blob was not fetched from storage")
			}
			if a := sr[len(sr)-1].header.Get("Authorization"); a != "" {
				t.Errorf("credentials leaked to blob storage on another host: %q", a)
			}
		})
	}
}
