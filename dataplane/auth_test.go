package dataplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/fleetkey"
)

func dataPlaneKey(t *testing.T) []byte {
	k, err := fleetkey.Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k.Derive(fleetkey.DataPlane)
}

func TestAuthClient(t *testing.T) {
	key := dataPlaneKey(t)
	f := newFixture(t, key)
	blob := randomBytes(t, 100_000)
	d := f.put(t, blob)
	ctx := context.Background()
	if err := f.files.Tag(ctx, "docker.io/library/nginx", "1.27", d); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		key     []byte
		skew    time.Duration
		wantErr error // nil: success
	}{
		{name: "fleet key", key: key},
		{name: "clock 100s behind", key: key, skew: -100 * time.Second},
		{name: "clock 100s ahead", key: key, skew: 100 * time.Second},
		{name: "wrong key", key: dataPlaneKey(t), wantErr: ErrUnauthorized},
		{name: "no key", key: nil, wantErr: ErrUnauthorized},
		{name: "stale timestamp", key: key, skew: -5 * time.Minute, wantErr: ErrUnauthorized},
		{name: "future timestamp", key: key, skew: 5 * time.Minute, wantErr: ErrUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := f.client(t, tc.key)
			c.now = func() time.Time { return time.Now().Add(tc.skew) }
			before := f.store.total()
			rc, _, err := c.Blob(ctx, f.srv.URL, d, 0)
			if err == nil {
				got, rerr := io.ReadAll(rc)
				rc.Close()
				if rerr != nil || !bytes.Equal(got, blob) {
					t.Fatalf("blob: %d bytes, %v", len(got), rerr)
				}
			}
			if !errors.Is(err, tc.wantErr) && !(tc.wantErr == nil && err == nil) {
				t.Fatalf("Blob: got %v, want %v", err, tc.wantErr)
			}
			_, err = c.Stat(ctx, f.srv.URL, d)
			if !errors.Is(err, tc.wantErr) && !(tc.wantErr == nil && err == nil) {
				t.Fatalf("Stat: got %v, want %v", err, tc.wantErr)
			}
			got, err := c.Tag(ctx, f.srv.URL, "docker.io/library/nginx", "1.27")
			if tc.wantErr == nil && (err != nil || got != d) {
				t.Fatalf("Tag = %s, %v; want %s", got, err, d)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Tag: got %v, want %v", err, tc.wantErr)
				}
				if f.store.total() != before {
					t.Fatal("an unauthenticated request reached the store")
				}
			}
		})
	}
}

// TestAuthRawRequests forges and replays headers by hand.
func TestAuthRawRequests(t *testing.T) {
	key := dataPlaneKey(t)
	f := newFixture(t, key)
	blob := randomBytes(t, 50_000)
	d := f.put(t, blob)
	other := f.put(t, randomBytes(t, 10))
	missing := digest.FromString("absent")
	now := time.Now()
	sign := func(method, uri string) string { return authorization(key, "node-a", method, uri, now) }
	path := "/blobs/" + d.String()

	for _, tc := range []struct {
		name   string
		method string
		path   string
		auth   string
		status int
	}{
		{name: "valid", method: "GET", path: path, auth: sign("GET", path), status: 200},
		{name: "valid HEAD", method: "HEAD", path: path, auth: sign("HEAD", path), status: 200},
		{name: "node ID with colon", method: "GET", path: path, auth: authorization(key, "a:b", "GET", path, now), status: 200},
		{name: "no header", method: "GET", path: path, status: 401},
		{name: "other path's signature", method: "GET", path: path, auth: sign("GET", "/blobs/"+other.String()), status: 401},
		{name: "signed HEAD used for GET", method: "GET", path: path, auth: sign("HEAD", path), status: 401},
		{name: "query added", method: "GET", path: path + "?x=1", auth: sign("GET", path), status: 401},
		{name: "node ID changed", method: "GET", path: path, auth: strings.Replace(sign("GET", path), "node-a:", "node-b:", 1), status: 401},
		{name: "timestamp changed", method: "GET", path: path, auth: strings.Replace(sign("GET", path), ":"+itoa(now.Unix())+":", ":"+itoa(now.Unix()+1)+":", 1), status: 401},
		{name: "MAC truncated", method: "GET", path: path, auth: sign("GET", path)[:len(sign("GET", path))-2], status: 401},
		{name: "other scheme", method: "GET", path: path, auth: "Bearer " + strings.TrimPrefix(sign("GET", path), Scheme+" "), status: 401},
		{name: "garbage", method: "GET", path: path, auth: Scheme + " ::", status: 401},
		{name: "stale", method: "GET", path: path, auth: authorization(key, "node-a", "GET", path, now.Add(-121*time.Second)), status: 401},
		{name: "health needs the key too", method: "GET", path: "/healthz", status: 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hdr []string
			if tc.auth != "" {
				hdr = []string{"Authorization", tc.auth}
			}
			before := f.store.total()
			r := raw(t, tc.method, f.srv.URL+tc.path, hdr...)
			if r.status != tc.status {
				t.Fatalf("status %d (%s), want %d", r.status, r.body, tc.status)
			}
			if tc.status == 200 {
				if tc.method == "GET" && !bytes.Equal(r.body, blob) {
					t.Fatal("wrong bytes")
				}
				return
			}
			if bytes.Contains(r.body, blob[:16]) || r.header.Get("Docker-Content-Digest") != "" || f.store.total() != before {
				t.Fatalf("401 leaked content or reached the store: %q %v", r.body, r.header)
			}
		})
	}

	t.Run("held and missing look the same", func(t *testing.T) {
		a := raw(t, "GET", f.srv.URL+path)
		b := raw(t, "GET", f.srv.URL+"/blobs/"+missing.String())
		if a.status != 401 || b.status != 401 || !bytes.Equal(a.body, b.body) {
			t.Fatalf("held: %d %q; missing: %d %q", a.status, a.body, b.status, b.body)
		}
	})
}

// tamper rewrites tag answers on the way back, as a machine in the middle
// of the LAN could.
type tamper struct {
	next    *http.Transport
	body    string
	keepMAC bool
}

func (tp tamper) CloseIdleConnections() { tp.next.CloseIdleConnections() }

func (tp tamper) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := tp.next.RoundTrip(req)
	if err != nil || !strings.HasPrefix(req.URL.Path, TagPath) {
		return resp, err
	}
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(tp.body))
	resp.ContentLength = int64(len(tp.body))
	if !tp.keepMAC {
		resp.Header.Del(responseMACHeader)
	}
	return resp, nil
}

func TestAuthTagAnswerIsSigned(t *testing.T) {
	key := dataPlaneKey(t)
	f := newFixture(t, key)
	open := newFixture(t, nil)
	ctx := context.Background()
	d := digest.FromString(`{"schemaVersion":2}`)
	evil := digest.FromString("attacker's manifest")
	for _, fx := range []*fixture{f, open} {
		fx.put(t, []byte(`{"schemaVersion":2}`))
		if err := fx.files.Tag(ctx, "docker.io/library/nginx", "1.27", d); err != nil {
			t.Fatal(err)
		}
	}
	forged := `{"digest":"` + evil.String() + `"}` + "\n"
	for _, tc := range []struct {
		name string
		rt   http.RoundTripper
		url  string
	}{
		{name: "answer replaced, MAC kept", rt: tamper{next: NewTransport(), body: forged, keepMAC: true}, url: f.srv.URL},
		{name: "answer replaced, MAC stripped", rt: tamper{next: NewTransport(), body: forged}, url: f.srv.URL},
		{name: "keyless peer answers", rt: NewTransport(), url: open.srv.URL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewClient(ClientOptions{Key: key, NodeID: "n", Transport: tc.rt})
			defer c.CloseIdleConnections()
			got, err := c.Tag(ctx, tc.url, "docker.io/library/nginx", "1.27")
			if !errors.Is(err, ErrUnauthorized) || got != "" {
				t.Fatalf("Tag = %q, %v; want ErrUnauthorized", got, err)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
