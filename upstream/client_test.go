package upstream_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imgmesh/imgmesh/upstream"
)

func TestResolve(t *testing.T) {
	plant := upstream.Registry{Name: "plant.local:5000", URL: "http://127.0.0.1:5001"}
	hub := upstream.Registry{Name: "docker.io", URL: "https://registry-1.docker.io"}
	mirror := upstream.Registry{Name: "docker.io", URL: "http://127.0.0.1:5002"}
	for _, tc := range []struct {
		name     string
		regs     []upstream.Registry
		restrict bool
		ns       string
		want     upstream.Registry
		wantErr  error
	}{
		{name: "no ns, nothing configured: Docker Hub", ns: "", want: hub},
		{name: "no ns: first configured", regs: []upstream.Registry{plant, mirror}, want: plant},
		{name: "configured name wins", regs: []upstream.Registry{plant}, ns: "plant.local:5000", want: plant},
		{name: "configured docker.io mirror", regs: []upstream.Registry{plant, mirror}, ns: "docker.io", want: mirror},
		{name: "index.docker.io alias of configured", regs: []upstream.Registry{mirror}, ns: "index.docker.io", want: mirror},
		{name: "docker.io default", regs: []upstream.Registry{plant}, ns: "docker.io", want: hub},
		{name: "registry-1 alias default", ns: "registry-1.docker.io", want: hub},
		{name: "unknown ns: https://NAME", regs: []upstream.Registry{plant}, ns: "ghcr.io", want: upstream.Registry{Name: "ghcr.io", URL: "https://ghcr.io"}},
		{name: "unknown ns with port", ns: "reg.example:8443", want: upstream.Registry{Name: "reg.example:8443", URL: "https://reg.example:8443"}},
		{name: "ns case folded", regs: []upstream.Registry{plant}, ns: "PLANT.local:5000", want: plant},
		{name: "ns with a path", ns: "evil.test/x", wantErr: upstream.ErrNoUpstream},
		{name: "ns with userinfo", ns: "u@evil.test", wantErr: upstream.ErrNoUpstream},
		{name: "restricted: configured", regs: []upstream.Registry{plant}, restrict: true, ns: "plant.local:5000", want: plant},
		{name: "restricted: no ns takes first", regs: []upstream.Registry{plant}, restrict: true, want: plant},
		{name: "restricted: unknown", regs: []upstream.Registry{plant}, restrict: true, ns: "ghcr.io", wantErr: upstream.ErrNoUpstream},
		{name: "restricted: docker.io not configured", regs: []upstream.Registry{plant}, restrict: true, ns: "docker.io", wantErr: upstream.ErrNoUpstream},
		{name: "restricted, none configured", restrict: true, wantErr: upstream.ErrNoUpstream},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t, upstream.Options{Registries: tc.regs, Restrict: tc.restrict})
			got, err := c.Resolve(tc.ns)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("Resolve(%q) = %+v, %v; want %+v, %v", tc.ns, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestRestrictedRefusesBeforeAnyRequest(t *testing.T) {
	o := newOrigin(t)
	c := newClient(t, upstream.Options{Registries: []upstream.Registry{{Name: "plant.test", URL: o.srv.URL}}, Restrict: true})
	if _, err := c.Manifest(bg, "ghcr.io", "app", "v1", false); !errors.Is(err, upstream.ErrNoUpstream) {
		t.Fatalf("got %v", err)
	}
	if n := len(o.requests()); n != 0 {
		t.Errorf("%d requests reached the configured upstream", n)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   upstream.Options
		expect string
	}{
		{name: "ftp scheme", opts: upstream.Options{Registries: []upstream.Registry{{Name: "a.test", URL: "ftp://a.test"}}}, expect: "scheme"},
		{name: "no scheme", opts: upstream.Options{Registries: []upstream.Registry{{Name: "a.test", URL: "a.test:5000"}}}, expect: "scheme"},
		{name: "no host", opts: upstream.Options{Registries: []upstream.Registry{{Name: "a.test", URL: "http://"}}}, expect: "no host"},
		{name: "path", opts: upstream.Options{Registries: []upstream.Registry{{Name: "a.test", URL: "https://a.test/v2"}}}, expect: "scheme://host"},
		{name: "empty name", opts: upstream.Options{Registries: []upstream.Registry{{URL: "https://a.test"}}}, expect: "empty registry name"},
		{name: "name with a path", opts: upstream.Options{Registries: []upstream.Registry{{Name: "a.test/x", URL: "https://a.test"}}}, expect: "host[:port]"},
		{name: "twice", opts: upstream.Options{Registries: []upstream.Registry{{Name: "docker.io", URL: "https://a.test"}, {Name: "index.docker.io", URL: "https://b.test"}}}, expect: "twice"},
		{name: "missing docker config", opts: upstream.Options{DockerConfig: filepath.Join(t.TempDir(), "nope.json")}, expect: "docker config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := upstream.New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.expect) {
				t.Fatalf("New = %v, %v; want an error mentioning %q", c, err, tc.expect)
			}
		})
	}
}
