// Package nodeurl checks the URL of a node's API that the CLI commands take
// (--node): http(s)://[USER:PASSWORD@]HOST:PORT.
package nodeurl

import (
	"fmt"
	"net/url"
	"strings"
)

// Parse checks raw (a trailing slash is allowed) and returns it parsed. Its
// error never shows a login: a value without a scheme does not parse as one,
// so what comes before the last @ is masked.
func Parse(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(raw, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("node URL %q: want a URL like http://127.0.0.1:5000 (or https://USER:PASSWORD@HOST:PORT)", hideLogin(raw))
	}
	return u, nil
}

func hideLogin(raw string) string {
	i := strings.LastIndex(raw, "@")
	if i < 0 {
		return raw
	}
	start := strings.Index(raw, "://") + 3 // 2 without a scheme: from the start
	if start > i {
		start = 0
	}
	return raw[:start] + "***" + raw[i:]
}
