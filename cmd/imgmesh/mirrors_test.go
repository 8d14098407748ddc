package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"gopkg.in/yaml.v3"
)

// hostsFile is the part of containerd's hosts.toml that imgmesh writes.
type hostsFile struct {
	Server string `toml:"server"`
	Host   map[string]struct {
		Capabilities []string `toml:"capabilities"`
	} `toml:"host"`
}

func readHosts(t *testing.T, path string) (hostsFile, toml.MetaData) {
	t.Helper()
	var h hostsFile
	md, err := toml.DecodeFile(path, &h)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Errorf("%s has keys containerd's format does not have here: %v", path, und)
	}
	return h, md
}

func TestConfigContainerdWritesHostsToml(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const node = "http://127.0.0.1:5123"
	code, stdout, stderr := runCLI(t, nil, "config", "containerd", "--dir", dir, "--node", node+"/",
		"--registry", "docker.io", "--registry", "ghcr.io", "--registry", "plant.local:5000", "--registry", "_default")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	tests := []struct {
		name, registry, server string
	}{
		{name: "docker hub uses its API host", registry: "docker.io", server: "https://registry-1.docker.io"},
		{name: "other registries are https://NAME", registry: "ghcr.io", server: "https://ghcr.io"},
		{name: "registry with a port", registry: "plant.local:5000", server: "https://plant.local:5000"},
		{name: "_default has no server", registry: "_default", server: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.registry, "hosts.toml")
			if !strings.Contains(stdout, "wrote "+path+"\n") {
				t.Errorf("stdout %q does not report writing %s", stdout, path)
			}
			h, md := readHosts(t, path)
			if h.Server != tt.server {
				t.Errorf("server = %q, want %q", h.Server, tt.server)
			}
			if tt.server == "" && md.IsDefined("server") {
				t.Errorf("_default must have no server key")
			}
			if len(h.Host) != 1 {
				t.Fatalf("hosts = %v, want only the node", h.Host)
			}
			caps, ok := h.Host[node]
			if !ok {
				t.Fatalf("no [host.%q] in %v", node, h.Host)
			}
			if !reflect.DeepEqual(caps.Capabilities, []string{"pull", "resolve"}) {
				t.Errorf("capabilities = %v, want [pull resolve]", caps.Capabilities)
			}
		})
	}
}

func TestConfigContainerdBackupAndIdempotence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "docker.io", "hosts.toml")
	args := []string{"config", "containerd", "--dir", dir, "--registry", "docker.io"}

	if code, _, stderr := runCLI(t, nil, args...); code != 0 {
		t.Fatalf("first write: exit %d: %s", code, stderr)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	// Same content again: nothing changes, and the user is told.
	code, stdout, _ := runCLI(t, nil, args...)
	if code != 0 || !strings.Contains(stdout, "unchanged "+path) {
		t.Fatalf("second write: exit %d, stdout %q; want it to say unchanged", code, stdout)
	}
	if m, _ := filepath.Glob(path + ".bak-*"); len(m) != 0 {
		t.Fatalf("identical content made backups %v", m)
	}

	// A hand-edited file is backed up, never silently overwritten.
	const mine = "server = \"https://mine.example\"\n"
	if err := os.WriteFile(path, []byte(mine), 0o644); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, nil, args...)
	if code != 0 {
		t.Fatalf("overwrite: exit %d: %s", code, stderr)
	}
	bak := path + ".bak-20260102T030405Z"
	if !strings.Contains(stdout, "backed up "+path+" to "+bak) {
		t.Errorf("stdout %q does not name the backup %s", stdout, bak)
	}
	if got, _ := os.ReadFile(bak); string(got) != mine {
		t.Errorf("backup holds %q, want the user's file %q", got, mine)
	}
	if got, _ := os.ReadFile(path); string(got) != string(written) {
		t.Errorf("hosts.toml = %q, want the generated content", got)
	}

	// Another edit within the same second: a second backup, the first kept.
	if err := os.WriteFile(path, []byte("# edited again\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, stdout, _ := runCLI(t, nil, args...); code != 0 || !strings.Contains(stdout, bak+".1") {
		t.Fatalf("second backup: exit %d, stdout %q", code, stdout)
	}
	if got, _ := os.ReadFile(bak); string(got) != mine {
		t.Errorf("first backup changed to %q", got)
	}
	if got, _ := os.ReadFile(bak + ".1"); string(got) != "# edited again\n" {
		t.Errorf("second backup holds %q", got)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Errorf("directory holds %d files, want hosts.toml and two backups (no temp files left)", len(entries))
	}
}

func TestConfigRejectsBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "path traversal", args: []string{"containerd", "--registry", ".."}, wantErr: `registry ".."`},
		{name: "slash in registry", args: []string{"containerd", "--registry", "a/b"}, wantErr: `registry "a/b"`},
		{name: "uppercase registry", args: []string{"k3s", "--registry", "Docker.io"}, wantErr: `registry "Docker.io"`},
		{name: "registry twice", args: []string{"containerd", "--registry", "docker.io", "--registry", "docker.io"}, wantErr: "given twice"},
		{name: "node without scheme", args: []string{"containerd", "--node", "127.0.0.1:5000"}, wantErr: "node"},
		{name: "node with path", args: []string{"docker", "--node", "http://127.0.0.1:5000/v2"}, wantErr: "scheme://host:port only"},
		{name: "docker has no registry flag", args: []string{"docker", "--registry", "ghcr.io"}, wantErr: "unknown flag: --registry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := append([]string{"config"}, tt.args...)
			if tt.args[0] == "containerd" {
				args = append(args, "--dir", dir)
			}
			code, stdout, stderr := runCLI(t, nil, args...)
			if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want 1 and one line mentioning %q", code, stderr, tt.wantErr)
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("bad input wrote %d entries", len(entries))
			}
		})
	}
}

func TestConfigK3s(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := runCLI(t, nil, "config", "k3s", "--registry", "docker.io",
		"--registry", "ghcr.io", "--registry", "_default", "--node", "http://127.0.0.1:5000")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var got struct {
		Mirrors map[string]struct {
			Endpoint []string `yaml:"endpoint"`
		} `yaml:"mirrors"`
	}
	dec := yaml.NewDecoder(strings.NewReader(stdout))
	dec.KnownFields(true)
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("parse registries.yaml: %v\n%s", err, stdout)
	}
	if len(got.Mirrors) != 3 {
		t.Errorf("mirrors = %v, want docker.io, ghcr.io and *", got.Mirrors)
	}
	for _, name := range []string{"docker.io", "ghcr.io", "*"} {
		if ep := got.Mirrors[name].Endpoint; !reflect.DeepEqual(ep, []string{"http://127.0.0.1:5000"}) {
			t.Errorf("mirror %q endpoint = %v, want the node", name, ep)
		}
	}
	// Order of the registries given is kept.
	if strings.Index(stdout, `"ghcr.io"`) < strings.Index(stdout, `"docker.io"`) {
		t.Errorf("registries out of order:\n%s", stdout)
	}
}

func TestConfigDocker(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "default node", want: "http://127.0.0.1:5000"},
		{name: "other node", args: []string{"--node", "https://node.plant:5443/"}, want: "https://node.plant:5443"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := runCLI(t, nil, append([]string{"config", "docker"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			var got map[string][]string
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatalf("parse daemon.json fragment: %v\n%s", err, stdout)
			}
			if want := map[string][]string{"registry-mirrors": {tt.want}}; !reflect.DeepEqual(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}
