package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestNodeAPIErrors: every command that talks to a node's API says in one
// line what went wrong, and never prints the password of --node.
func TestNodeAPIErrors(t *testing.T) {
	withLogin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "tech" || p != "right" {
			w.Header().Set("WWW-Authenticate", `Basic realm="imgmesh"`)
			http.Error(w, "login", http.StatusUnauthorized)
			return
		}
		http.NotFound(w, r) // the right login, but not an imgmesh node
	}))
	defer withLogin.Close()
	host := strings.TrimPrefix(withLogin.URL, "http://")
	tests := []struct {
		name    string
		args    []string
		want    string
		mustNot string
	}{
		{name: "wrong password", args: []string{"status", "--node", "http://tech:s3cret@" + host}, want: "refused the login", mustNot: "s3cret"},
		{name: "wrong password, peers", args: []string{"peers", "--node", "http://tech:s3cret@" + host}, want: "refused the login", mustNot: "s3cret"},
		{name: "no login", args: []string{"images", "ls", "--node", withLogin.URL}, want: "wants a login: give --node http://USER:PASSWORD@" + host},
		{name: "not an imgmesh node", args: []string{"status", "--node", "http://tech:right@" + host}, want: "is it an imgmesh node?", mustNot: "right@"},
		{name: "no scheme", args: []string{"status", "--node", "127.0.0.1:5000"}, want: "want a URL like"},
		{name: "a path", args: []string{"peers", "--node", "http://127.0.0.1:5000/v2"}, want: "want a URL like"},
		{name: "no scheme, password", args: []string{"status", "--node", "tech:s3cret@127.0.0.1:5000"}, want: "want a URL like", mustNot: "s3cret"},
		{name: "bad escape, password", args: []string{"peers", "--node", "http://tech:s3%zz@127.0.0.1:5000"}, want: "want a URL like", mustNot: "s3%zz"},
		{name: "down, password", args: []string{"images", "ls", "--node", "http://tech:s3cret@127.0.0.1:9"}, want: "not reachable", mustNot: "s3cret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, nil, tt.args...)
			if code == 0 || !strings.Contains(errOut, tt.want) || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Errorf("exit %d, stderr %q: want one line with %q", code, errOut, tt.want)
			}
			if tt.mustNot != "" && strings.Contains(errOut, tt.mustNot) {
				t.Errorf("stderr %q shows %q", errOut, tt.mustNot)
			}
		})
	}
}

// TestPullOnlyAccountOnTheCLI: with a --pull-htpasswd account, the commands
// that read work, and one that changes the node fails in one line that
// says the account may only pull, and changes nothing.
func TestPullOnlyAccountOnTheCLI(t *testing.T) {
	t.Parallel()
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--upstream", "none",
		"--htpasswd", htpasswdFile(t, "tech", "admin-pw"), "--pull-htpasswd", htpasswdFile(t, "device", "pull-pw"))
	device := "http://device:pull-pw@" + n.addr
	for _, args := range [][]string{{"status", "--node", device}, {"images", "ls", "--node", device}} {
		if code, out, errOut := runCLI(t, nil, args...); code != 0 {
			t.Errorf("%v as the pull-only account: exit %d\n%s%s", args[:2], code, out, errOut)
		}
	}
	// images missing asks with a POST: a question, which it may ask.
	code, out, errOut := runCLI(t, nil, "images", "missing", "--node", device, "plant/app:v1")
	if code != 1 || !strings.Contains(out, "plant/app:v1") || strings.Contains(errOut, "may only pull") {
		t.Errorf("images missing as the pull-only account: exit %d\n%s%s; want exit 1 listing the image", code, out, errOut)
	}
	code, _, errOut = runCLI(t, nil, "images", "pin", "--node", device, "plant/app:v1")
	if code == 0 || !strings.Contains(errOut, "may only pull") || strings.Count(strings.TrimSpace(errOut), "\n") != 0 ||
		strings.Contains(errOut, "pull-pw") {
		t.Errorf("images pin as the pull-only account: exit %d, stderr %q; want one line saying it may only pull", code, errOut)
	}
	// The full account gets past the login (the image is not there).
	code, _, errOut = runCLI(t, nil, "images", "pin", "--node", "http://tech:admin-pw@"+n.addr, "plant/app:v1")
	if code == 0 || strings.Contains(errOut, "may only pull") || strings.Contains(errOut, "login") {
		t.Errorf("images pin as the full account: exit %d, stderr %q; want the node's answer about the image", code, errOut)
	}
}

// TestPeersOfALoneNode: peers on a node without a fleet says so instead of
// printing an empty table.
func TestPeersOfALoneNode(t *testing.T) {
	t.Parallel()
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--upstream", "none")
	code, out, errOut := runCLI(t, nil, "peers", "--node", "http://"+n.addr)
	if code != 0 || !strings.Contains(out, "no fleet: the node runs alone") {
		t.Fatalf("peers of a lone node: exit %d\n%s%s", code, out, errOut)
	}
}
