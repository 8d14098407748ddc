package upstream

import (
	"container/list"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"golang.org/x/sync/singleflight"
)

// Defaults of a Client.
const (
	DefaultUserAgent = "imgmesh"
	// DockerHub is the name a client uses for Docker Hub and DockerHubURL
	// where its registry API is served.
	DockerHub    = "docker.io"
	DockerHubURL = "https://registry-1.docker.io"

	dialTimeout           = 3 * time.Second
	tlsHandshakeTimeout   = 5 * time.Second
	responseHeaderTimeout = 10 * time.Second
	// setupTimeout bounds one auth handshake (ping plus token fetch).
	setupTimeout = 30 * time.Second
	// maxTransports bounds the per-(registry, repository) transport cache.
	maxTransports = 512
)

// Options configure a Client.
type Options struct {
	// Registries are the configured upstreams, the first one is the default
	// for requests that name no registry.
	Registries []Registry
	// Restrict limits upstreams to Registries: other names get ErrNoUpstream.
	Restrict bool
	// DockerConfig is the path of a docker config.json with credentials;
	// empty means $DOCKER_CONFIG/config.json or ~/.docker/config.json.
	DockerConfig string
	// Transport carries every request (nil: a transport with bounded dial,
	// TLS handshake and response header timeouts).
	Transport http.RoundTripper
	// RootCAs verifies upstream TLS certificates when Transport is nil
	// (nil: the system's pool, or SSL_CERT_FILE / SSL_CERT_DIR).
	RootCAs   *x509.CertPool
	Logger    *slog.Logger
	UserAgent string // default "imgmesh"
}

// Client fetches manifests, blobs and tags from origin registries. It is
// safe for concurrent use.
type Client struct {
	regs     []Registry
	restrict bool
	keychain authn.Keychain
	base     http.RoundTripper
	owned    *http.Transport // base when New made it; closed by Close
	log      *slog.Logger
	ua       string

	setup singleflight.Group
	mu    sync.Mutex
	cache map[string]*list.Element // of *cached
	order *list.List               // oldest first
}

type cached struct {
	key string
	rt  http.RoundTripper
}

// New validates the configured registries and returns a Client.
func New(o Options) (*Client, error) {
	c := &Client{
		restrict: o.Restrict,
		base:     o.Transport,
		log:      o.Logger,
		ua:       o.UserAgent,
		cache:    map[string]*list.Element{},
		order:    list.New(),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.ua == "" {
		c.ua = DefaultUserAgent
	}
	seen := map[string]bool{}
	for _, r := range o.Registries {
		reg, err := checkRegistry(r)
		if err != nil {
			return nil, err
		}
		if seen[reg.Name] {
			return nil, fmt.Errorf("upstream %q configured twice", reg.Name)
		}
		seen[reg.Name] = true
		c.regs = append(c.regs, reg)
	}
	if o.DockerConfig != "" {
		kc, err := newFileKeychain(o.DockerConfig)
		if err != nil {
			return nil, err
		}
		c.keychain = kc
	} else {
		c.keychain = authn.DefaultKeychain
	}
	if c.base == nil {
		c.owned = newTransport()
		if o.RootCAs != nil {
			c.owned.TLSClientConfig = &tls.Config{RootCAs: o.RootCAs}
		}
		c.base = c.owned
	}
	return c, nil
}

// newTransport bounds connection setup but not bodies: a blob may stream
// for as long as bytes keep flowing.
func newTransport() *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           d.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		ResponseHeaderTimeout: responseHeaderTimeout,
		ExpectContinueTimeout: time.Second,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
	}
}

// Close releases idle connections of the transport New created.
func (c *Client) Close() error {
	if c.owned != nil {
		c.owned.CloseIdleConnections()
	}
	return nil
}

// checkRegistry validates a configured upstream and normalizes its name.
func checkRegistry(r Registry) (Registry, error) {
	name, err := canonicalName(r.Name)
	if err != nil {
		return Registry{}, err
	}
	u, err := url.Parse(r.URL)
	if err != nil {
		return Registry{}, fmt.Errorf("upstream %s: URL %q: %w", r.Name, r.URL, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return Registry{}, fmt.Errorf("upstream %s: URL %q: scheme must be http or https", r.Name, r.URL)
	case u.Host == "":
		return Registry{}, fmt.Errorf("upstream %s: URL %q: no host", r.Name, r.URL)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || strings.Trim(u.Path, "/") != "":
		return Registry{}, fmt.Errorf("upstream %s: URL %q: want only scheme://host[:port] (credentials go in the docker config)", r.Name, r.URL)
	}
	return Registry{Name: name, URL: u.Scheme + "://" + u.Host}, nil
}

// canonicalName lower-cases a registry name and folds Docker Hub's aliases
// into "docker.io".
func canonicalName(ns string) (string, error) {
	ns = strings.ToLower(ns)
	switch ns {
	case "":
		return "", fmt.Errorf("empty registry name")
	case DockerHub, "index.docker.io", "registry-1.docker.io":
		return DockerHub, nil
	}
	if u, err := url.Parse("//" + ns); err != nil || u.Host != ns || strings.ContainsAny(ns, "@/?#") {
		return "", fmt.Errorf("registry name %q: want host[:port]", ns)
	}
	return ns, nil
}

// Resolve maps the registry a client means (containerd's ?ns=) to the
// upstream that serves it. An empty ns means the first configured upstream
// (Docker Hub when none is configured and upstreams are not restricted).
func (c *Client) Resolve(ns string) (Registry, error) {
	if ns == "" {
		switch {
		case len(c.regs) > 0:
			return c.regs[0], nil
		case c.restrict:
			return Registry{}, fmt.Errorf("no registry named and none configured: %w", ErrNoUpstream)
		}
		return Registry{Name: DockerHub, URL: DockerHubURL}, nil
	}
	name, err := canonicalName(ns)
	if err != nil {
		return Registry{}, fmt.Errorf("%w: %w", ErrNoUpstream, err)
	}
	for _, r := range c.regs {
		if r.Name == name {
			return r, nil
		}
	}
	switch {
	case c.restrict:
		return Registry{}, fmt.Errorf("registry %q is not configured and upstreams are restricted: %w", ns, ErrNoUpstream)
	case name == DockerHub:
		return Registry{Name: DockerHub, URL: DockerHubURL}, nil
	}
	return Registry{Name: name, URL: "https://" + name}, nil
}
