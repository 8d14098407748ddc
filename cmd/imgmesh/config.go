package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/discovery"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// Config is every setting of `imgmesh serve`. Defaults are overridden by the
// YAML config file, then by IMGMESH_* environment variables, then by flags.
type Config struct {
	DataDir           string        `yaml:"data_dir"`
	Listen            string        `yaml:"listen"`
	Upstreams         []Upstream    `yaml:"upstreams"`
	RestrictUpstreams bool          `yaml:"restrict_upstreams"`
	TagTimeout        time.Duration `yaml:"tag_timeout"`
	DockerConfig      string        `yaml:"docker_config"`
	LogLevel          string        `yaml:"log_level"`
	LogFormat         string        `yaml:"log_format"`
	MeshConfig        `yaml:",inline"`
	ExposeConfig      `yaml:",inline"`
	QuotaConfig       `yaml:",inline"`
	RateConfig        `yaml:",inline"`
}

// Upstream is one origin registry: the name a client means (containerd's
// ?ns=) and the URL it is fetched from.
type Upstream struct {
	Name string `yaml:"name"`
	URL  string `yaml:"url"`
}

const (
	defaultDataDir    = "./data"
	defaultListen     = "127.0.0.1:5000"
	defaultTagTimeout = 3 * time.Second
	envPrefix         = "IMGMESH_"
)

// defaultConfig is the configuration `make run` starts with: no external
// service is needed to start (Docker Hub is only asked on a miss).
func defaultConfig(lookupEnv func(string) (string, bool)) Config {
	return Config{
		DataDir:      defaultDataDir,
		Listen:       defaultListen,
		Upstreams:    []Upstream{{Name: "docker.io", URL: "https://registry-1.docker.io"}},
		TagTimeout:   defaultTagTimeout,
		DockerConfig: defaultDockerConfig(lookupEnv),
		LogLevel:     "info",
		LogFormat:    "text",
		MeshConfig:   defaultMesh(),
	}
}

// defaultDockerConfig is $DOCKER_CONFIG/config.json, else
// $HOME/.docker/config.json, as the docker CLI looks it up.
func defaultDockerConfig(lookupEnv func(string) (string, bool)) string {
	if dir, ok := lookupEnv("DOCKER_CONFIG"); ok && dir != "" {
		return filepath.Join(dir, "config.json")
	}
	if home, ok := lookupEnv("HOME"); ok && home != "" {
		return filepath.Join(home, ".docker", "config.json")
	}
	return ""
}

// serveFlags holds the raw flag values; only flags the user set override.
type serveFlags struct {
	configFile   string
	dataDir      string
	listen       string
	upstreams    []string
	restrict     bool
	tagTimeout   time.Duration
	dockerConfig string
	logLevel     string
	logFormat    string
	mesh         MeshConfig
	expose       ExposeConfig
	quota        QuotaConfig
	rate         RateConfig
}

func (f *serveFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.configFile, "config", "", "YAML config file (env IMGMESH_CONFIG)")
	fs.StringVar(&f.dataDir, "data-dir", defaultDataDir, "directory for blobs and the index (env IMGMESH_DATA_DIR)")
	fs.StringVar(&f.listen, "listen", defaultListen, "HOST:PORT of the registry API (env IMGMESH_LISTEN)")
	fs.StringArrayVar(&f.upstreams, "upstream", nil, "NAME=URL of an origin registry, repeatable; the first is used for requests without ?ns=; 'none' = no upstream (env IMGMESH_UPSTREAM, comma-separated) (default docker.io=https://registry-1.docker.io)")
	fs.BoolVar(&f.restrict, "restrict-upstreams", false, "fetch only from the configured upstreams; an unknown ?ns= is an error (env IMGMESH_RESTRICT_UPSTREAMS)")
	fs.DurationVar(&f.tagTimeout, "tag-timeout", defaultTagTimeout, "how long to ask upstream for a tag before using the local tag index (env IMGMESH_TAG_TIMEOUT)")
	fs.StringVar(&f.dockerConfig, "docker-config", "", "docker config.json with upstream credentials (env IMGMESH_DOCKER_CONFIG) (default $DOCKER_CONFIG/config.json or ~/.docker/config.json)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error (env IMGMESH_LOG_LEVEL)")
	fs.StringVar(&f.logFormat, "log-format", "text", "text or json (env IMGMESH_LOG_FORMAT)")
	f.mesh.register(fs)
	f.expose.register(fs)
	f.quota.register(fs)
	f.rate.register(fs)
}

// loadConfig merges defaults, the config file, the environment and the flags
// the user set (in rising precedence) and validates the result.
func loadConfig(fs *pflag.FlagSet, f *serveFlags, lookupEnv func(string) (string, bool)) (Config, error) {
	cfg := defaultConfig(lookupEnv)

	file := f.configFile
	if !fs.Changed("config") {
		file, _ = lookupEnv(envPrefix + "CONFIG")
	}
	if file != "" {
		if err := cfg.loadFile(file); err != nil {
			return Config{}, err
		}
	}
	if err := cfg.applyEnv(lookupEnv); err != nil {
		return Config{}, err
	}
	if err := cfg.applyFlags(fs, f); err != nil {
		return Config{}, err
	}
	if err := cfg.validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func (c *Config) loadFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

func (c *Config) applyEnv(lookupEnv func(string) (string, bool)) error {
	str := func(key string, dst *string) {
		if v, ok := lookupEnv(envPrefix + key); ok && v != "" {
			*dst = v
		}
	}
	str("DATA_DIR", &c.DataDir)
	str("LISTEN", &c.Listen)
	str("DOCKER_CONFIG", &c.DockerConfig)
	str("LOG_LEVEL", &c.LogLevel)
	str("LOG_FORMAT", &c.LogFormat)
	if v, ok := lookupEnv(envPrefix + "UPSTREAM"); ok && v != "" {
		ups, err := parseUpstreams(strings.Split(v, ","))
		if err != nil {
			return fmt.Errorf("%sUPSTREAM: %w", envPrefix, err)
		}
		c.Upstreams = ups
	}
	if v, ok := lookupEnv(envPrefix + "RESTRICT_UPSTREAMS"); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%sRESTRICT_UPSTREAMS: %q is not true or false", envPrefix, v)
		}
		c.RestrictUpstreams = b
	}
	if v, ok := lookupEnv(envPrefix + "TAG_TIMEOUT"); ok && v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%sTAG_TIMEOUT: %q is not a duration (like 3s)", envPrefix, v)
		}
		c.TagTimeout = d
	}
	if err := c.MeshConfig.applyEnv(lookupEnv); err != nil {
		return err
	}
	if err := c.ExposeConfig.applyEnv(lookupEnv); err != nil {
		return err
	}
	if err := c.QuotaConfig.applyEnv(lookupEnv); err != nil {
		return err
	}
	return c.RateConfig.applyEnv(lookupEnv)
}

func (c *Config) applyFlags(fs *pflag.FlagSet, f *serveFlags) error {
	if fs.Changed("data-dir") {
		c.DataDir = f.dataDir
	}
	if fs.Changed("listen") {
		c.Listen = f.listen
	}
	if fs.Changed("upstream") {
		ups, err := parseUpstreams(f.upstreams)
		if err != nil {
			return fmt.Errorf("--upstream: %w", err)
		}
		c.Upstreams = ups
	}
	if fs.Changed("restrict-upstreams") {
		c.RestrictUpstreams = f.restrict
	}
	if fs.Changed("tag-timeout") {
		c.TagTimeout = f.tagTimeout
	}
	if fs.Changed("docker-config") {
		c.DockerConfig = f.dockerConfig
	}
	if fs.Changed("log-level") {
		c.LogLevel = f.logLevel
	}
	if fs.Changed("log-format") {
		c.LogFormat = f.logFormat
	}
	c.MeshConfig.applyFlags(fs, &f.mesh)
	c.ExposeConfig.applyFlags(fs, &f.expose)
	c.QuotaConfig.applyFlags(fs, &f.quota)
	c.RateConfig.applyFlags(fs, &f.rate)
	return nil
}

// noUpstream, as the only --upstream value, runs the node without upstream:
// it serves pushed and already stored content only.
const noUpstream = "none"

// parseUpstreams parses NAME=URL pairs, keeping their order.
func parseUpstreams(pairs []string) ([]Upstream, error) {
	if len(pairs) == 1 && strings.TrimSpace(pairs[0]) == noUpstream {
		return []Upstream{}, nil
	}
	ups := make([]Upstream, 0, len(pairs))
	for _, p := range pairs {
		name, u, ok := strings.Cut(strings.TrimSpace(p), "=")
		if !ok {
			return nil, fmt.Errorf("%q is not NAME=URL", p)
		}
		ups = append(ups, Upstream{Name: name, URL: u})
	}
	return ups, nil
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("data dir must not be empty")
	}
	if err := validateListen(c.Listen); err != nil {
		return err
	}
	seen := make(map[string]bool, len(c.Upstreams))
	for _, u := range c.Upstreams {
		if err := validateUpstream(u); err != nil {
			return err
		}
		if seen[u.Name] {
			return fmt.Errorf("upstream %q configured twice", u.Name)
		}
		seen[u.Name] = true
	}
	if c.TagTimeout <= 0 {
		return fmt.Errorf("tag timeout must be positive, got %s", c.TagTimeout)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("log format %q: want text or json", c.LogFormat)
	}
	if err := c.MeshConfig.validate(); err != nil {
		return err
	}
	if err := c.ExposeConfig.validate(c.Listen); err != nil {
		return err
	}
	if err := c.QuotaConfig.validate(); err != nil {
		return err
	}
	return c.RateConfig.validate()
}

func validateListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: want HOST:PORT", addr)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("listen address %q: bad host", addr)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("listen address %q: port must be a number 0-65535", addr)
	}
	return nil
}

func validateUpstream(u Upstream) error {
	if u.Name == "" || strings.ContainsAny(u.Name, "/ \t?#@") || u.Name != strings.ToLower(u.Name) {
		return fmt.Errorf("upstream name %q: want a registry host like docker.io or plant.local:5000", u.Name)
	}
	p, err := url.Parse(u.URL)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
		return fmt.Errorf("upstream %s: URL %q must be http:// or https:// with a host", u.Name, u.URL)
	}
	if p.User != nil || p.RawQuery != "" || p.Fragment != "" {
		return fmt.Errorf("upstream %s: URL %q must not carry credentials, query or fragment (use --docker-config for credentials)", u.Name, u.URL)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	switch strings.ToLower(s) {
	case "debug", "info", "warn", "error":
		if err := l.UnmarshalText([]byte(s)); err != nil {
			return 0, fmt.Errorf("log level %q: %w", s, err)
		}
		return l, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
}

// newLogger builds the slog logger the config asks for.
func (c Config) newLogger(w io.Writer) *slog.Logger {
	level, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// nodeNameFile keeps a generated node name in the data directory.
const nodeNameFile = "node-name"

// keptNodeName is the name this node had before, or a new one (the host
// name and a random suffix) kept in dataDir: a device restarted in the
// middle of a rollout is the same fleet member, with the same reports,
// rather than a new one while its old name waits for it.
func keptNodeName(dataDir string) (string, error) {
	p := filepath.Join(dataDir, nodeNameFile)
	if b, err := os.ReadFile(p); err == nil {
		name := strings.TrimSpace(string(b))
		if name == "" || len(name) > 128 || strings.ContainsAny(name, " \t\n") {
			return "", fmt.Errorf("%s: not a node name: remove it, or give --node-name", p)
		}
		return name, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("node name: %w", err)
	}
	name := discovery.DefaultName()
	if err := os.WriteFile(p, []byte(name+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("keep the node name: %w", err)
	}
	return name, nil
}
