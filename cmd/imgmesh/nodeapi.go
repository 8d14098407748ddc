package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/internal/nodeurl"
)

// nodeAPI is a node's admin API (/api/v1/) as the CLI commands call it:
// one place that checks --node, sends the login the URL carries, and turns
// every failure into one line that never shows the password.
type nodeAPI struct {
	base  string // scheme://[user:password@]host:port
	shown string // base with the password replaced by ***
	login bool   // the URL carries a user name
}

// newNodeAPI checks a --node value: http(s)://[USER:PASSWORD@]HOST:PORT.
func newNodeAPI(raw string) (*nodeAPI, error) {
	u, err := nodeurl.Parse(raw)
	if err != nil {
		return nil, err
	}
	return &nodeAPI{base: u.String(), shown: u.Redacted(), login: u.User != nil}, nil
}

// nodeClient has no proxy: a node is on this machine or the plant's LAN,
// and import/export reach it the same way.
var nodeClient = &http.Client{Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4}}

// call sends body (JSON, if not nil) to path and decodes a want answer into
// out, within timeout.
func (a *nodeAPI) call(ctx context.Context, method, path string, body any, want int, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, rd)
	if err != nil {
		return fmt.Errorf("node %s: %w", a.shown, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := nodeClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its URL would repeat ours, password included
		}
		return fmt.Errorf("node %s not reachable: %w", a.shown, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("node %s: %s %s: %w", a.shown, method, path, err)
	}
	if resp.StatusCode != want {
		return a.refused(resp, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("node %s: %s %s: answer not understood: %w", a.shown, method, path, err)
	}
	return nil
}

// refused says why the node did not answer as asked.
func (a *nodeAPI) refused(resp *http.Response, raw []byte) error {
	if resp.StatusCode == http.StatusUnauthorized {
		if !a.login {
			host := strings.TrimPrefix(strings.TrimPrefix(a.shown, "http://"), "https://")
			return fmt.Errorf("node %s wants a login: give --node %s://USER:PASSWORD@%s", a.shown, resp.Request.URL.Scheme, host)
		}
		return fmt.Errorf("node %s refused the login in --node", a.shown)
	}
	var eb admin.ErrorBody
	if json.Unmarshal(raw, &eb) == nil && len(eb.Errors) > 0 {
		switch e := eb.Errors[0]; {
		case resp.StatusCode == http.StatusForbidden && a.login && e.Code == "DENIED":
			return fmt.Errorf("node %s: the account in --node may only pull; %s %s needs an account of the node's --htpasswd",
				a.shown, resp.Request.Method, resp.Request.URL.Path)
		case e.Message != "":
			return fmt.Errorf("node refused: %s", e.Message)
		}
	}
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("node %s: %s not found: is it an imgmesh node?", a.shown, resp.Request.URL.Path)
	}
	return fmt.Errorf("node %s: %s %s: %s", a.shown, resp.Request.Method, resp.Request.URL.Path, resp.Status)
}
