package archive

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/imgmesh/imgmesh/internal/nodeurl"
)

// nodeClient talks to a node's registry API with go-containerregistry,
// one pusher or puller per registry name (the ?ns= its requests carry).
type nodeClient struct {
	base    string // scheme://host:port, without credentials
	host    string // host:port of the node
	opts    []name.Option
	rt      http.RoundTripper
	auth    authn.Authenticator
	pushers map[string]*remote.Pusher
	pullers map[string]*remote.Puller
}

// nodeResponseTimeout bounds the wait for a node's answer once a request is
// sent: a node that accepts and then hangs fails the command instead of
// holding it forever. A node streaming a blob it fetches itself answers
// with the first bytes, so this is far longer than any healthy wait.
var nodeResponseTimeout = 2 * time.Minute

// newNodeClient parses the node's base URL: http or https, no path;
// user:password@ in it become basic auth credentials.
func newNodeClient(raw string, rt http.RoundTripper) (*nodeClient, error) {
	if raw == "" {
		raw = DefaultNode
	}
	u, err := nodeurl.Parse(raw)
	if err != nil {
		return nil, err
	}
	c := &nodeClient{base: u.Scheme + "://" + u.Host, host: u.Host, rt: rt, auth: authn.Anonymous,
		pushers: map[string]*remote.Pusher{}, pullers: map[string]*remote.Puller{}}
	if u.Scheme == "http" {
		c.opts = append(c.opts, name.Insecure)
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		c.auth = &authn.Basic{Username: u.User.Username(), Password: pw}
	}
	if c.rt == nil {
		c.rt = &http.Transport{
			Proxy: nil, MaxIdleConnsPerHost: 16, DisableCompression: true,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: nodeResponseTimeout,
		}
	}
	return c, nil
}

// ping checks that the node answers at all, for a clear error when it
// is not running.
func (c *nodeClient) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: c.rt, Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("node %s not reachable: %w", c.base, errors.Unwrap(err))
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized && c.auth == authn.Anonymous {
		return fmt.Errorf("node %s wants a login: give --node %s://USER:PASSWORD@%s", c.base, req.URL.Scheme, c.host)
	}
	return nil
}

// close releases idle connections of a transport the client made.
func (c *nodeClient) close() {
	if t, ok := c.rt.(interface{ CloseIdleConnections() }); ok {
		t.CloseIdleConnections()
	}
}

// repo is t's repository on the node.
func (c *nodeClient) repo(t target) (name.Repository, error) {
	return name.NewRepository(c.host+"/"+t.repo, c.opts...)
}

// ref is t (by tag or digest) on the node.
func (c *nodeClient) ref(t target) (name.Reference, error) {
	if t.digest != "" {
		return name.NewDigest(c.host+"/"+t.repo+"@"+t.digest, c.opts...)
	}
	return name.NewTag(c.host+"/"+t.repo+":"+t.tag, c.opts...)
}

// options are the go-containerregistry options for requests about
// registry ns.
func (c *nodeClient) options(ctx context.Context, ns string) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithTransport(nsTransport{ns: ns, host: c.host, next: c.rt}),
		remote.WithAuth(c.auth),
		remote.WithUserAgent("imgmesh-archive"),
		remote.WithJobs(4),
		// The node is near: retry a flake quickly, report a failure soon.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Steps: 2}),
	}
}

func (c *nodeClient) pusher(ctx context.Context, ns string) (*remote.Pusher, error) {
	if p, ok := c.pushers[ns]; ok {
		return p, nil
	}
	p, err := remote.NewPusher(c.options(ctx, ns)...)
	if err != nil {
		return nil, err
	}
	c.pushers[ns] = p
	return p, nil
}

func (c *nodeClient) puller(ctx context.Context, ns string) (*remote.Puller, error) {
	if p, ok := c.pullers[ns]; ok {
		return p, nil
	}
	p, err := remote.NewPuller(c.options(ctx, ns)...)
	if err != nil {
		return nil, err
	}
	c.pullers[ns] = p
	return p, nil
}

// nsTransport adds ?ns=REGISTRY to every request to the node that does not
// carry one yet (go-containerregistry adds no query parameters of its own),
// so that the node files a push where containerd's pull of the same name
// looks, and serves a pull from there.
type nsTransport struct {
	ns   string
	host string
	next http.RoundTripper
}

func (t nsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.ns == "" || req.URL.Host != t.host || req.URL.Query().Has("ns") {
		return t.next.RoundTrip(req)
	}
	r := req.Clone(req.Context())
	q := r.URL.Query()
	q.Set("ns", t.ns)
	r.URL.RawQuery = q.Encode()
	return t.next.RoundTrip(r)
}

// nodeError is a registry error answer of the node, told without the
// request's URL; a 404 is also ErrMissing.
type nodeError struct{ te *transport.Error }

// fromNode rewrites a registry error answer in err as a nodeError.
func fromNode(err error) error {
	var te *transport.Error
	if err == nil || !errors.As(err, &te) {
		return err
	}
	return nodeError{te: te}
}

func (e nodeError) Error() string {
	var diags []string
	for _, d := range e.te.Errors {
		diags = append(diags, d.String())
	}
	if len(diags) == 0 {
		diags = append(diags, http.StatusText(e.te.StatusCode))
	}
	what := fmt.Sprintf("%d %s", e.te.StatusCode, strings.Join(diags, "; "))
	switch e.te.StatusCode {
	case http.StatusNotFound:
		return "not on the node (" + what + ")"
	case http.StatusUnauthorized:
		return "the node refused the login (" + what + ")"
	case http.StatusForbidden:
		return "the node's account may not do this: a pull-only account? (" + what + ")"
	}
	return "the node answered " + what
}

func (e nodeError) Unwrap() []error {
	if e.te.StatusCode == http.StatusNotFound {
		return []error{e.te, ErrMissing}
	}
	return []error{e.te}
}
