package main

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const (
	packagedConfig = "../../packaging/config.yaml"
	packagedUnit   = "../../packaging/imgmesh.service"
)

// TestPackagedConfig: packaging/config.yaml loads the way the service loads
// it and holds the built-in defaults (but for data_dir), so the comments that
// call them defaults are true.
func TestPackagedConfig(t *testing.T) {
	t.Parallel()
	env := map[string]string{"DOCKER_CONFIG": "/etc/imgmesh/docker"} // as the unit sets it
	cfg, err := parseServe(t, env, "--config", packagedConfig)
	if err != nil {
		t.Fatalf("imgmesh serve --config %s: %v", packagedConfig, err)
	}
	if cfg.DataDir != "/var/lib/imgmesh" || cfg.Listen != "127.0.0.1:5000" || !cfg.Mesh ||
		cfg.MaxUploadRate != 0 || cfg.Htpasswd != "" || cfg.DockerConfig != "/etc/imgmesh/docker/config.json" {
		t.Errorf("packaged config: data_dir %q, listen %q, mesh %v, max_upload_rate %d, htpasswd %q, docker config %q",
			cfg.DataDir, cfg.Listen, cfg.Mesh, cfg.MaxUploadRate, cfg.Htpasswd, cfg.DockerConfig)
	}

	want := defaultConfig(mapEnv(env))
	want.DataDir = "/var/lib/imgmesh"
	// What the file spells out but the built-in default leaves empty.
	want.MaxUploadRateText, want.MaxDownloadRateText = "0", "0"
	got := cfg
	if len(got.Bootstrap) == 0 { // [] and {} in the file, nil built in
		got.Bootstrap = nil
	}
	if len(got.Join) == 0 {
		got.Join = nil
	}
	if len(got.Labels) == 0 {
		got.Labels = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("packaged config differs from the defaults it claims:\n got %+v\nwant %+v", got, want)
	}
}

// TestPackagedConfigListsEverySetting: each YAML key of Config appears in
// packaging/config.yaml (set, or commented out with its explanation), so a
// new setting cannot be left out of the documented default config.
func TestPackagedConfigListsEverySetting(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(packagedConfig)
	if err != nil {
		t.Fatal(err)
	}
	keys := yamlKeys(reflect.TypeFor[Config]())
	if len(keys) < 25 || !slices.Contains(keys, "lookup_timeout") || !slices.Contains(keys, "tls_cert") {
		t.Fatalf("yamlKeys found %d keys, not Config's: %v", len(keys), keys)
	}
	for _, key := range keys {
		if !regexp.MustCompile(`(?m)^#? ?` + key + `:`).Match(b) {
			t.Errorf("%s does not list the setting %q", packagedConfig, key)
		}
	}
}

// yamlKeys lists the top-level YAML keys of a struct, inlined ones included.
func yamlKeys(typ reflect.Type) []string {
	var keys []string
	for f := range typ.Fields() {
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		switch {
		case tag == "-" || !f.IsExported():
		case strings.Contains(opts, "inline"):
			keys = append(keys, yamlKeys(f.Type)...)
		case name != "":
			keys = append(keys, name)
		}
	}
	return keys
}

// TestPackagedUnit: the unit starts the node on the packaged config and keeps
// its data where the config says.
func TestPackagedUnit(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(packagedUnit)
	if err != nil {
		t.Fatal(err)
	}
	unit := string(b)
	for _, line := range []string{
		"ExecStart=/usr/local/bin/imgmesh serve --config /etc/imgmesh/config.yaml",
		"StateDirectory=imgmesh", // /var/lib/imgmesh, the packaged data_dir
		"Environment=DOCKER_CONFIG=/etc/imgmesh/docker",
		"Restart=on-failure",
		"NoNewPrivileges=yes",
	} {
		if !strings.Contains(unit, "\n"+line+"\n") {
			t.Errorf("%s lacks the line %q", packagedUnit, line)
		}
	}
}
