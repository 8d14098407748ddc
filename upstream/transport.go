package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// do sends one request to reg (u is a URL on it) for repo through the
// cached authenticating transport. On a 401 it drops that transport, redoes
// the auth handshake and retries once. Errors wrap ErrUnavailable and name
// what.
func (c *Client) do(ctx context.Context, reg Registry, repo, method, u string, hdr http.Header, what string) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		rt, key, err := c.transport(ctx, reg, repo)
		if err != nil {
			return nil, fmt.Errorf("%s: auth with %s: %w: %w", what, reg.URL, ErrUnavailable, err)
		}
		req, err := http.NewRequestWithContext(ctx, method, u, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		hc := &http.Client{Transport: rt, CheckRedirect: checkRedirect}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
		}
		if resp.StatusCode == http.StatusUnauthorized && attempt == 0 {
			drain(resp)
			c.drop(key)
			c.log.Debug("upstream answered 401, redoing auth", "registry", reg.Name, "repo", repo)
			continue
		}
		return resp, nil
	}
}

// checkRedirect follows up to 10 redirects (blob storage often lives on
// another host) and never carries an Authorization header to another host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		req.Header.Del("Authorization")
	}
	return nil
}

// statusError turns an unexpected response into an error wrapping
// ErrNotFound (404, or an OCI *_UNKNOWN code) or ErrUnavailable (anything
// else; with ErrDenied for 401 and 403). It consumes and closes the body.
func statusError(resp *http.Response, what string) error {
	defer drain(resp)
	err := transport.CheckError(resp) // parses the OCI error body
	switch {
	case notFound(resp.StatusCode, err):
		return fmt.Errorf("%s: %w: HTTP %d: %w", what, ErrNotFound, resp.StatusCode, err)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return fmt.Errorf("%s: %w (%w): HTTP %d: %w", what, ErrUnavailable, ErrDenied, resp.StatusCode, err)
	}
	return fmt.Errorf("%s: %w: HTTP %d: %w", what, ErrUnavailable, resp.StatusCode, err)
}

func notFound(status int, err error) bool {
	switch status {
	case http.StatusNotFound:
		return true
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests,
		http.StatusRequestedRangeNotSatisfiable: // ggcr's registry says BLOB_UNKNOWN to a Range it cannot parse
		return false
	}
	var te *transport.Error
	if status < 400 || status >= 500 || !errors.As(err, &te) {
		return false
	}
	for _, d := range te.Errors {
		switch d.Code {
		case transport.BlobUnknownErrorCode, transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
			return true
		}
	}
	return false
}

func drain(resp *http.Response) {
	_, _ = io.CopyN(io.Discard, resp.Body, 64<<10) // lets a small body's connection be reused
	_ = resp.Body.Close()
}

// transport returns the authenticating transport for (reg, repo), doing
// the auth handshake once for concurrent callers.
func (c *Client) transport(ctx context.Context, reg Registry, repo string) (http.RoundTripper, string, error) {
	key := reg.Name + " " + reg.URL + " " + repo
	c.mu.Lock()
	if e, ok := c.cache[key]; ok {
		c.mu.Unlock()
		return e.Value.(*cached).rt, key, nil
	}
	c.mu.Unlock()
	ch := c.setup.DoChan(key, func() (any, error) {
		// Detached from one caller's cancellation: others may share it.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), setupTimeout)
		defer cancel()
		start := time.Now()
		rt, err := c.newAuthTransport(sctx, reg, repo)
		if err != nil {
			return nil, err
		}
		c.put(key, rt)
		c.log.Debug("upstream auth set up", "registry", reg.Name, "url", reg.URL, "repo", repo, "took", time.Since(start))
		return rt, nil
	})
	select {
	case <-ctx.Done():
		return nil, key, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return nil, key, r.Err
		}
		return r.Val.(http.RoundTripper), key, nil
	}
}

func (c *Client) put(key string, rt http.RoundTripper) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[key]; ok {
		c.order.Remove(e)
	}
	c.cache[key] = c.order.PushBack(&cached{key: key, rt: rt})
	for c.order.Len() > maxTransports {
		oldest := c.order.Front()
		c.order.Remove(oldest)
		delete(c.cache, oldest.Value.(*cached).key)
	}
}

func (c *Client) drop(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.cache[key]; ok {
		c.order.Remove(e)
		delete(c.cache, key)
	}
}

// newAuthTransport pings reg's URL and sets up Basic or Bearer auth with
// the credentials stored for reg.Name (the name the client means), scoped
// to pulling repo.
func (c *Client) newAuthTransport(ctx context.Context, reg Registry, repo string) (http.RoundTripper, error) {
	u, err := url.Parse(reg.URL)
	if err != nil {
		return nil, err
	}
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	target, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, err
	}
	auth := authn.Anonymous
	if credReg, err := name.NewRegistry(reg.Name); err == nil {
		if auth, err = authn.Resolve(ctx, c.keychain, credReg.Repo(repo)); err != nil {
			return nil, fmt.Errorf("credentials for %s: %w", reg.Name, err)
		}
	}
	inner := transport.NewUserAgent(&schemeGuard{host: u.Host, scheme: u.Scheme, inner: c.base}, c.ua)
	scopes := []string{target.Repo(repo).Scope(transport.PullScope)}
	return transport.NewWithContext(ctx, target, auth, inner, scopes)
}

// schemeGuard keeps requests to the registry's host on the configured
// scheme: ggcr would otherwise try https before http for an insecure
// registry, or fall back to http for a private address.
type schemeGuard struct {
	host, scheme string
	inner        http.RoundTripper
}

func (g *schemeGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host == g.host && r.URL.Scheme != g.scheme {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, fmt.Errorf("%s is configured as %s, not %s", g.host, g.scheme, r.URL.Scheme)
	}
	return g.inner.RoundTrip(r)
}

// fileKeychain reads credentials from exactly one docker config.json, with
// the lookup rules of authn.DefaultKeychain. The file is read at each
// lookup so edited credentials apply to the next auth handshake.
type fileKeychain struct{ path string }

func newFileKeychain(path string) (*fileKeychain, error) {
	k := &fileKeychain{path: path}
	if _, err := k.load(); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *fileKeychain) load() (*configfile.ConfigFile, error) {
	f, err := os.Open(k.path)
	if err != nil {
		return nil, fmt.Errorf("docker config: %w", err)
	}
	defer f.Close()
	cf, err := config.LoadFromReader(f)
	if err != nil {
		return nil, fmt.Errorf("docker config %s: %w", k.path, err)
	}
	return cf, nil
}

// Resolve implements authn.Keychain.
func (k *fileKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	cf, err := k.load()
	if err != nil {
		return nil, err
	}
	for _, key := range []string{target.String(), target.RegistryStr()} {
		if key == name.DefaultRegistry {
			key = authn.DefaultAuthKey
		}
		ac, err := cf.GetAuthConfig(key)
		if err != nil {
			return nil, fmt.Errorf("docker config %s: %s: %w", k.path, key, err)
		}
		ac.ServerAddress = ""
		if ac != (types.AuthConfig{}) {
			return authn.FromConfig(authn.AuthConfig{
				Username:      ac.Username,
				Password:      ac.Password,
				Auth:          ac.Auth,
				IdentityToken: ac.IdentityToken,
				RegistryToken: ac.RegistryToken,
			}), nil
		}
	}
	return authn.Anonymous, nil
}
