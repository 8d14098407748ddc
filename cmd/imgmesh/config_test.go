package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// fixedNow is the clock of in-process CLI runs.
var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// runCLI runs the whole CLI in-process with env as its only environment.
func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{
		ctx:       context.Background(),
		stdout:    &out,
		stderr:    &errb,
		lookupEnv: mapEnv(env),
		now:       func() time.Time { return fixedNow },
	}
	code = c.run(args)
	return code, out.String(), errb.String()
}

func mapEnv(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}
}

// parseServe parses args with the flags of the serve command and loads the
// configuration the way `imgmesh serve` does, without serving.
func parseServe(t *testing.T, env map[string]string, args ...string) (Config, error) {
	t.Helper()
	var f serveFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	return loadConfig(fs, &f, mapEnv(env))
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "imgmesh.yaml", `
data_dir: /file/data
listen: 127.0.0.1:7000
upstreams:
  - name: docker.io
    url: http://127.0.0.1:5001
  - name: ghcr.io
    url: https://ghcr.io
restrict_upstreams: true
tag_timeout: 5s
docker_config: /file/config.json
log_level: warn
log_format: json
`)
	fromFile := Config{
		DataDir: "/file/data", Listen: "127.0.0.1:7000",
		Upstreams: []Upstream{
			{Name: "docker.io", URL: "http://127.0.0.1:5001"},
			{Name: "ghcr.io", URL: "https://ghcr.io"},
		},
		RestrictUpstreams: true, TagTimeout: 5 * time.Second,
		DockerConfig: "/file/config.json", LogLevel: "warn", LogFormat: "json",
	}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want func(c *Config)
		base *Config // nil: defaults
	}{
		{
			name: "defaults",
			env:  map[string]string{"HOME": "/home/u"},
			want: func(c *Config) {},
		},
		{
			name: "mesh settings from env, flags winning",
			env: map[string]string{"HOME": "/home/u", "IMGMESH_JOIN": "10.0.0.1:7946, 10.0.0.2:7946",
				"IMGMESH_MDNS": "false", "IMGMESH_LABELS": "zone=a,line=3", "IMGMESH_LOOKUP_TIMEOUT": "40ms",
				"IMGMESH_FLEET_KEY": "/env/fleet.key"},
			args: []string{"--join", "10.0.0.9:7946", "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--fleet-key", "/flag/fleet.key"},
			want: func(c *Config) {
				c.Join = []string{"10.0.0.9:7946"}
				c.MDNS = false
				c.Labels = map[string]string{"zone": "a", "line": "3"}
				c.LookupTimeout = 40 * time.Millisecond
				c.P2PListen = []string{"/ip4/127.0.0.1/tcp/0"}
				c.FleetKey = "/flag/fleet.key"
			},
		},
		{
			name: "DOCKER_CONFIG sets the default credentials file",
			env:  map[string]string{"HOME": "/home/u", "DOCKER_CONFIG": "/etc/dc"},
			want: func(c *Config) { c.DockerConfig = "/etc/dc/config.json" },
		},
		{
			name: "file overrides defaults",
			env:  map[string]string{"HOME": "/home/u"},
			args: []string{"--config", file},
			base: &fromFile,
			want: func(c *Config) {},
		},
		{
			name: "IMGMESH_CONFIG names the file",
			env:  map[string]string{"HOME": "/home/u", "IMGMESH_CONFIG": file},
			base: &fromFile,
			want: func(c *Config) {},
		},
		{
			name: "env overrides file",
			env: map[string]string{
				"HOME": "/home/u", "IMGMESH_CONFIG": file,
				"IMGMESH_DATA_DIR": "/env/data", "IMGMESH_LISTEN": "[::1]:7001",
				"IMGMESH_UPSTREAM":           "quay.io=https://quay.io, docker.io=http://127.0.0.1:5002",
				"IMGMESH_RESTRICT_UPSTREAMS": "false", "IMGMESH_TAG_TIMEOUT": "250ms",
				"IMGMESH_LOG_LEVEL": "debug", "IMGMESH_DOCKER_CONFIG": "/env/c.json",
			},
			base: &fromFile,
			want: func(c *Config) {
				c.DataDir, c.Listen = "/env/data", "[::1]:7001"
				c.Upstreams = []Upstream{{"quay.io", "https://quay.io"}, {"docker.io", "http://127.0.0.1:5002"}}
				c.RestrictUpstreams, c.TagTimeout = false, 250*time.Millisecond
				c.LogLevel, c.DockerConfig = "debug", "/env/c.json"
			},
		},
		{
			name: "flags override env and file, upstream order kept",
			env: map[string]string{
				"HOME": "/home/u", "IMGMESH_DATA_DIR": "/env/data",
				"IMGMESH_UPSTREAM": "quay.io=https://quay.io", "IMGMESH_LOG_FORMAT": "json",
			},
			args: []string{
				"--config", file, "--data-dir", "/flag/data", "--listen", "0.0.0.0:5000",
				"--upstream", "plant.local:5000=http://10.0.0.9:5000", "--upstream", "docker.io=https://registry-1.docker.io",
				"--restrict-upstreams=false", "--tag-timeout", "1s", "--docker-config", "/flag/c.json",
				"--log-level", "error", "--log-format", "text", "--insecure",
			},
			base: &fromFile,
			want: func(c *Config) {
				c.DataDir, c.Listen = "/flag/data", "0.0.0.0:5000"
				c.Upstreams = []Upstream{{"plant.local:5000", "http://10.0.0.9:5000"}, {"docker.io", "https://registry-1.docker.io"}}
				c.RestrictUpstreams, c.TagTimeout = false, time.Second
				c.DockerConfig, c.LogLevel, c.LogFormat = "/flag/c.json", "error", "text"
				c.Insecure = true // 0.0.0.0 without --htpasswd
			},
		},
		{
			name: "flag --config beats IMGMESH_CONFIG",
			env:  map[string]string{"HOME": "/home/u", "IMGMESH_CONFIG": "/does/not/exist.yaml"},
			args: []string{"--config", file},
			base: &fromFile,
			want: func(c *Config) {},
		},
		{
			name: "empty upstream list in the file runs without upstream",
			env:  map[string]string{"HOME": "/home/u", "IMGMESH_CONFIG": writeFile(t, dir, "local.yaml", "upstreams: []\n")},
			want: func(c *Config) { c.Upstreams = []Upstream{} },
		},
		{
			name: "IMGMESH_UPSTREAM=none runs without upstream",
			env:  map[string]string{"HOME": "/home/u", "IMGMESH_UPSTREAM": "none"},
			want: func(c *Config) { c.Upstreams = []Upstream{} },
		},
		{
			name: "upstream none runs without upstream",
			env:  map[string]string{"HOME": "/home/u"},
			args: []string{"--upstream", "none"},
			want: func(c *Config) { c.Upstreams = []Upstream{} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			want := defaultConfig(mapEnv(tt.env))
			if tt.base != nil {
				want = *tt.base
				want.Upstreams = append([]Upstream(nil), tt.base.Upstreams...)
				want.MeshConfig = defaultMesh()
			}
			tt.want(&want)
			got, err := parseServe(t, tt.env, tt.args...)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestDefaultsMatchIssue(t *testing.T) {
	t.Parallel()
	c := defaultConfig(mapEnv(map[string]string{"HOME": "/root"}))
	if c.DataDir != "./data" || c.Listen != "127.0.0.1:5000" || c.TagTimeout != 3*time.Second {
		t.Errorf("defaults = %+v", c)
	}
	if len(c.Upstreams) != 1 || c.Upstreams[0].Name != "docker.io" {
		t.Errorf("default upstreams = %+v, want docker.io only", c.Upstreams)
	}
	if c.DockerConfig != "/root/.docker/config.json" {
		t.Errorf("docker config = %q", c.DockerConfig)
	}
}

func TestServeRejectsBadSettings(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	badYAML := writeFile(t, dir, "bad.yaml", "listen: 127.0.0.1:5000\nlisten_addr: oops\n")
	badTimeout := writeFile(t, dir, "timeout.yaml", "tag_timeout: soon\n")
	tests := []struct {
		name    string
		env     map[string]string
		args    []string
		wantErr string // substring of the one stderr line
	}{
		{name: "upstream without =", args: []string{"--upstream", "docker.io"}, wantErr: `"docker.io" is not NAME=URL`},
		{name: "upstream bad scheme", args: []string{"--upstream", "docker.io=ftp://x"}, wantErr: "must be http:// or https://"},
		{name: "upstream without host", args: []string{"--upstream", "docker.io=https://"}, wantErr: "must be http:// or https://"},
		{name: "upstream empty name", args: []string{"--upstream", "=https://x"}, wantErr: "upstream name"},
		{name: "upstream with credentials", args: []string{"--upstream", "a.io=https://u:p@a.io"}, wantErr: "must not carry credentials"},
		{name: "upstream twice", args: []string{"--upstream", "a.io=https://a.io", "--upstream", "a.io=https://b.io"}, wantErr: "configured twice"},
		{name: "env upstream bad", env: map[string]string{"IMGMESH_UPSTREAM": "docker.io"}, wantErr: "IMGMESH_UPSTREAM"},
		{name: "listen without port", args: []string{"--listen", "localhost"}, wantErr: "want HOST:PORT"},
		{name: "listen bad port", args: []string{"--listen", "127.0.0.1:http"}, wantErr: "port must be a number"},
		{name: "listen port too big", args: []string{"--listen", "127.0.0.1:70000"}, wantErr: "port must be a number"},
		{name: "env listen bad", env: map[string]string{"IMGMESH_LISTEN": "nope"}, wantErr: "listen address"},
		{name: "unknown log level", args: []string{"--log-level", "loud"}, wantErr: `log level "loud"`},
		{name: "unknown log format", args: []string{"--log-format", "xml"}, wantErr: `log format "xml"`},
		{name: "zero tag timeout", args: []string{"--tag-timeout", "0s"}, wantErr: "tag timeout must be positive"},
		{name: "bad tag timeout flag", args: []string{"--tag-timeout", "soon"}, wantErr: "invalid argument"},
		{name: "env bool", env: map[string]string{"IMGMESH_RESTRICT_UPSTREAMS": "maybe"}, wantErr: "IMGMESH_RESTRICT_UPSTREAMS"},
		{name: "env duration", env: map[string]string{"IMGMESH_TAG_TIMEOUT": "3"}, wantErr: "IMGMESH_TAG_TIMEOUT"},
		{name: "missing config file", args: []string{"--config", filepath.Join(dir, "none.yaml")}, wantErr: "no such file"},
		{name: "unknown yaml key", args: []string{"--config", badYAML}, wantErr: "field listen_addr not found"},
		{name: "bad yaml duration", args: []string{"--config", badTimeout}, wantErr: "config file"},
		{name: "empty data dir", args: []string{"--data-dir", ""}, wantErr: "data dir"},
		{name: "unknown flag", args: []string{"--listen-addr", "x"}, wantErr: "unknown flag: --listen-addr"},
		{name: "stray argument", args: []string{"extra"}, wantErr: `unknown command "extra"`},
		// Mesh settings are checked with the mesh off too.
		{name: "join without port, mesh off", args: []string{"--mesh=false", "--join", "nohostport"}, wantErr: `--join "nohostport": want the HOST:PORT of a member's gossip`},
		{name: "bad bootstrap, mesh off", args: []string{"--mesh=false", "--bootstrap", "garbage"}, wantErr: `--bootstrap "garbage": not a multiaddr`},
		{name: "negative lookup timeout, mesh off", args: []string{"--mesh=false", "--lookup-timeout", "-5ms"}, wantErr: "lookup timeout must be positive"},
		{name: "missing fleet key, mesh off", args: []string{"--mesh=false", "--fleet-key", filepath.Join(dir, "none.key")}, wantErr: "fleet key"},
		{name: "fleet key is a directory", args: []string{"--mesh=false", "--fleet-key", dir}, wantErr: "a directory, not a key file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, tt.env, append([]string{"serve"}, tt.args...)...)
			if code != 1 {
				t.Fatalf("exit code %d, want 1 (stderr %q)", code, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "imgmesh: ") {
				t.Fatalf("stderr = %q, want one line starting with 'imgmesh: '", stderr)
			}
			if !strings.Contains(lines[0], tt.wantErr) {
				t.Errorf("stderr = %q, want it to mention %q", lines[0], tt.wantErr)
			}
			if strings.Contains(stderr, "Usage:") || strings.Contains(stderr, "panic") {
				t.Errorf("stderr has a usage dump or panic: %q", stderr)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--version"}, {"version"}} {
		code, stdout, stderr := runCLI(t, nil, args...)
		if code != 0 || stdout != "imgmesh "+version+"\n" || stderr != "" {
			t.Errorf("%v: code %d stdout %q stderr %q", args, code, stdout, stderr)
		}
	}
}
