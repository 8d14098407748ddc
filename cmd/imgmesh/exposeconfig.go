package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/spf13/pflag"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/registryapi"
)

// ExposeConfig is exposed mode (a seed node, a technician's laptop): TLS and
// basic auth on the registry API, and the CA a device trusts for such a node
// as its upstream. It is inlined in Config: the YAML keys sit beside the
// others.
type ExposeConfig struct {
	TLSCert  string `yaml:"tls_cert"`
	TLSKey   string `yaml:"tls_key"`
	Htpasswd string `yaml:"htpasswd"`
	// PullHtpasswd holds accounts that may only pull (devices).
	PullHtpasswd string `yaml:"pull_htpasswd"`
	Insecure     bool   `yaml:"insecure"`
	UpstreamCA   string `yaml:"upstream_ca"`
}

func (c *ExposeConfig) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) of the registry API; serves HTTPS, TLS 1.2+, with --tls-key (env IMGMESH_TLS_CERT)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key of --tls-cert (env IMGMESH_TLS_KEY)")
	fs.StringVar(&c.Htpasswd, "htpasswd", "", "htpasswd file (bcrypt, htpasswd -B): basic auth on the registry, admin API and metrics; /healthz and /readyz stay open (env IMGMESH_HTPASSWD)")
	fs.StringVar(&c.PullHtpasswd, "pull-htpasswd", "", "htpasswd file of pull-only accounts (devices): GET and HEAD only, no push, delete or admin change; needs --htpasswd (env IMGMESH_PULL_HTPASSWD)")
	fs.BoolVar(&c.Insecure, "insecure", false, "allow a non-loopback --listen address without --htpasswd (env IMGMESH_INSECURE)")
	fs.StringVar(&c.UpstreamCA, "upstream-ca", "", "PEM CA certificate(s) trusted for upstreams besides the system's, e.g. a seed node's (env IMGMESH_UPSTREAM_CA)")
}

var exposeFlagNames = map[string]func(dst, src *ExposeConfig){
	"tls-cert":      func(d, s *ExposeConfig) { d.TLSCert = s.TLSCert },
	"tls-key":       func(d, s *ExposeConfig) { d.TLSKey = s.TLSKey },
	"htpasswd":      func(d, s *ExposeConfig) { d.Htpasswd = s.Htpasswd },
	"pull-htpasswd": func(d, s *ExposeConfig) { d.PullHtpasswd = s.PullHtpasswd },
	"insecure":      func(d, s *ExposeConfig) { d.Insecure = s.Insecure },
	"upstream-ca":   func(d, s *ExposeConfig) { d.UpstreamCA = s.UpstreamCA },
}

func (c *ExposeConfig) applyFlags(fs *pflag.FlagSet, set *ExposeConfig) {
	for name, copyFn := range exposeFlagNames {
		if fs.Changed(name) {
			copyFn(c, set)
		}
	}
}

func (c *ExposeConfig) applyEnv(lookupEnv func(string) (string, bool)) error {
	for key, dst := range map[string]*string{"TLS_CERT": &c.TLSCert, "TLS_KEY": &c.TLSKey,
		"HTPASSWD": &c.Htpasswd, "PULL_HTPASSWD": &c.PullHtpasswd, "UPSTREAM_CA": &c.UpstreamCA} {
		if v, ok := lookupEnv(envPrefix + key); ok && v != "" {
			*dst = v
		}
	}
	if v, ok := lookupEnv(envPrefix + "INSECURE"); ok && v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%sINSECURE: %q is not true or false", envPrefix, v)
		}
		c.Insecure = b
	}
	return nil
}

// validate checks the settings against listen, the registry API's address:
// off loopback, the API needs --htpasswd unless --insecure says otherwise.
func (c *ExposeConfig) validate(listen string) error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together: give both or neither")
	}
	if c.PullHtpasswd != "" && c.Htpasswd == "" {
		return errors.New("--pull-htpasswd needs --htpasswd: the accounts that may push and manage the node")
	}
	if c.Htpasswd == "" && !c.Insecure && !isLoopback(listen) {
		return fmt.Errorf("refusing to serve the registry API on non-loopback address %s without authentication: "+
			"give --htpasswd FILE (and --tls-cert/--tls-key), or --insecure to expose it to everyone on the network", listen)
	}
	return nil
}

// isLoopback reports whether a HOST:PORT listen address stays on this
// machine: a loopback IP or "localhost". An empty host listens everywhere;
// another name might resolve anywhere, so it counts as exposed.
func isLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// serverTLS loads the certificate of the registry API: nil without
// --tls-cert. Loading it at start makes a bad file fail before anything
// listens.
func (c ExposeConfig) serverTLS() (*tls.Config, error) {
	if c.TLSCert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}, nil
}

// authWrap returns the handler wrapper of --htpasswd: identity without it.
// Basic auth over plain HTTP off loopback is allowed, with a warning.
func (c ExposeConfig) authWrap(log *slog.Logger, listen string) (func(http.Handler) http.Handler, error) {
	if c.Htpasswd == "" {
		return func(h http.Handler) http.Handler { return h }, nil
	}
	if c.TLSCert == "" && !isLoopback(listen) {
		log.Warn("basic auth without TLS: passwords cross the network in clear text; give --tls-cert and --tls-key", "listen", listen)
	}
	users, err := registryapi.LoadHtpasswd(c.Htpasswd)
	if err != nil {
		return nil, fmt.Errorf("--htpasswd: %w", err)
	}
	var pullers *registryapi.Htpasswd
	if c.PullHtpasswd != "" {
		if pullers, err = registryapi.LoadHtpasswd(c.PullHtpasswd); err != nil {
			return nil, fmt.Errorf("--pull-htpasswd: %w", err)
		}
	}
	auth, err := registryapi.NewAuthenticator(registryapi.AuthOptions{Users: users, Pullers: pullers, Logger: log,
		Queries: []string{admin.ImagesPath + "/missing"}})
	if err != nil {
		files := "--htpasswd " + c.Htpasswd
		if pullers != nil {
			files += ", --pull-htpasswd " + c.PullHtpasswd
		}
		return nil, fmt.Errorf("%s: %w", files, err)
	}
	if pullers != nil {
		log.Info("pull-only accounts", "file", c.PullHtpasswd, "accounts", pullers.Len())
	}
	return auth.Wrap, nil
}

// upstreamRoots is the system's CA pool plus --upstream-ca: nil (the
// system's, or SSL_CERT_FILE) without it.
func (c ExposeConfig) upstreamRoots() (*x509.CertPool, error) {
	if c.UpstreamCA == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.UpstreamCA)
	if err != nil {
		return nil, fmt.Errorf("--upstream-ca: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--upstream-ca %s: no PEM certificate in the file", c.UpstreamCA)
	}
	return pool, nil
}
