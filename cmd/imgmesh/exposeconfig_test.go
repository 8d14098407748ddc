package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// testPKI is a CA and a server certificate for 127.0.0.1 it signed, as PEM
// files in a temp dir.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgmesh test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := testPKI{
		caFile:   writeFile(t, dir, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))),
		certFile: writeFile(t, dir, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}))),
		keyFile:  writeFile(t, dir, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))),
		pool:     x509.NewCertPool(),
	}
	p.pool.AddCert(ca)
	return p
}

func htpasswdFile(t *testing.T, user, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, t.TempDir(), "htpasswd", user+":"+string(h)+"\n")
}

func TestExposeConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "expose.yaml", `
listen: 0.0.0.0:5000
tls_cert: /file/cert.pem
tls_key: /file/key.pem
htpasswd: /file/htpasswd
upstream_ca: /file/ca.pem
`)
	fromFile := ExposeConfig{TLSCert: "/file/cert.pem", TLSKey: "/file/key.pem", Htpasswd: "/file/htpasswd", UpstreamCA: "/file/ca.pem"}
	for _, tc := range []struct {
		name    string
		env     map[string]string
		args    []string
		want    ExposeConfig
		wantErr string
	}{
		{name: "loopback needs nothing", args: []string{"--listen", "127.0.0.1:5000"}},
		{name: "other loopback address", args: []string{"--listen", "127.0.0.2:5000"}},
		{name: "IPv6 loopback", args: []string{"--listen", "[::1]:5000"}},
		{name: "localhost", args: []string{"--listen", "localhost:5000"}},
		{name: "all interfaces refused", args: []string{"--listen", "0.0.0.0:5000"}, wantErr: "refusing to serve the registry API on non-loopback address 0.0.0.0:5000 without authentication"},
		{name: "empty host refused", args: []string{"--listen", ":5000"}, wantErr: "--insecure"},
		{name: "IPv6 any refused", args: []string{"--listen", "[::]:5000"}, wantErr: "--htpasswd"},
		{name: "LAN address refused", args: []string{"--listen", "192.168.1.5:5000"}, wantErr: "--htpasswd"},
		{name: "host name refused", args: []string{"--listen", "seed.local:5000"}, wantErr: "--htpasswd"},
		{name: "insecure flag allows", args: []string{"--listen", "0.0.0.0:5000", "--insecure"}, want: ExposeConfig{Insecure: true}},
		{name: "insecure env allows", env: map[string]string{"IMGMESH_INSECURE": "true"}, args: []string{"--listen", "0.0.0.0:5000"}, want: ExposeConfig{Insecure: true}},
		{name: "insecure env not a bool", env: map[string]string{"IMGMESH_INSECURE": "maybe"}, wantErr: "IMGMESH_INSECURE"},
		{name: "htpasswd allows", args: []string{"--listen", "0.0.0.0:5000", "--htpasswd", "/h"}, want: ExposeConfig{Htpasswd: "/h"}},
		{name: "cert without key", args: []string{"--tls-cert", "/c"}, wantErr: "--tls-cert and --tls-key go together"},
		{name: "key without cert", args: []string{"--tls-key", "/k"}, wantErr: "--tls-cert and --tls-key go together"},
		{name: "yaml keys", env: map[string]string{"IMGMESH_CONFIG": file}, want: fromFile},
		{
			name: "env over yaml",
			env: map[string]string{"IMGMESH_CONFIG": file, "IMGMESH_TLS_CERT": "/env/c", "IMGMESH_TLS_KEY": "/env/k",
				"IMGMESH_HTPASSWD": "/env/h", "IMGMESH_UPSTREAM_CA": "/env/ca"},
			want: ExposeConfig{TLSCert: "/env/c", TLSKey: "/env/k", Htpasswd: "/env/h", UpstreamCA: "/env/ca"},
		},
		{
			name: "flags over env",
			env:  map[string]string{"IMGMESH_CONFIG": file, "IMGMESH_HTPASSWD": "/env/h"},
			args: []string{"--htpasswd", "/flag/h", "--tls-cert", "/flag/c", "--tls-key", "/flag/k", "--upstream-ca", "/flag/ca"},
			want: ExposeConfig{TLSCert: "/flag/c", TLSKey: "/flag/k", Htpasswd: "/flag/h", UpstreamCA: "/flag/ca"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServe(t, tc.env, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ExposeConfig != tc.want {
				t.Fatalf("got %+v, want %+v", cfg.ExposeConfig, tc.want)
			}
		})
	}
}

// TestServeExposedBadFiles: a bad exposed-mode file stops the node with one
// line and exit 1 before it creates its data directory.
func TestServeExposedBadFiles(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	dir := t.TempDir()
	md5 := writeFile(t, dir, "md5.htpasswd", "alice:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n")
	notPEM := writeFile(t, dir, "ca.txt", "not a certificate\n")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "non-bcrypt htpasswd", args: []string{"--htpasswd", md5}, want: "not a bcrypt hash"},
		{name: "missing htpasswd", args: []string{"--htpasswd", filepath.Join(dir, "nope")}, want: "--htpasswd"},
		{name: "key of another certificate", args: []string{"--tls-cert", pki.certFile, "--tls-key", newTestPKI(t).keyFile}, want: "--tls-cert/--tls-key"},
		{name: "CA file without PEM", args: []string{"--upstream-ca", notPEM}, want: "no PEM certificate"},
		{name: "non-loopback without auth", args: []string{"--listen", "0.0.0.0:0"}, want: "--insecure"},
		{name: "pull accounts without full ones", args: []string{"--pull-htpasswd", htpasswdFile(t, "device", "pw")}, want: "--pull-htpasswd needs --htpasswd"},
		{name: "non-bcrypt pull htpasswd", args: []string{"--htpasswd", htpasswdFile(t, "tech", "pw"), "--pull-htpasswd", md5}, want: "--pull-htpasswd"},
		{name: "one name in both files", args: []string{"--htpasswd", htpasswdFile(t, "tech", "pw"), "--pull-htpasswd", htpasswdFile(t, "tech", "other")}, want: `"tech" is both`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dataDir := filepath.Join(t.TempDir(), "data")
			args := append([]string{"serve", "--mesh=false", "--listen", "127.0.0.1:0", "--data-dir", dataDir, "--upstream", "none"}, tc.args...)
			code, _, stderr := runCLI(t, nil, args...)
			if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want 1 and one line with %q", code, stderr, tc.want)
			}
			if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
				t.Errorf("data dir created although the node refused to start (%v)", err)
			}
		})
	}
}

// TestServeExposed: with --tls-cert, --tls-key and --htpasswd the API speaks
// TLS 1.2+ only and wants credentials everywhere but the probes.
func TestServeExposed(t *testing.T) {
	t.Parallel()
	pki := newTestPKI(t)
	n := startServe(t, "--listen", "127.0.0.1:0", "--data-dir", t.TempDir(), "--upstream", "none",
		"--tls-cert", pki.certFile, "--tls-key", pki.keyFile, "--htpasswd", htpasswdFile(t, "tech", "pw"))
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool}}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	base := "https://" + n.addr

	if code, _ := get(t, c, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz without credentials: %d, want 200", code)
	}
	for _, path := range []string{"/v2/", "/metrics", "/api/v1/status"} {
		code, body := get(t, c, base+path)
		if code != http.StatusUnauthorized || !strings.Contains(body, "UNAUTHORIZED") {
			t.Errorf("%s without credentials: %d %s, want 401 UNAUTHORIZED", path, code, body)
		}
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth("tech", "pw")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s with credentials: %d, want 200", path, resp.StatusCode)
		}
	}

	// Plain HTTP to the TLS port gets Go's 400, not the API.
	if code, _ := get(t, newClient(t), "http://"+n.addr+"/v2/"); code != http.StatusBadRequest {
		t.Errorf("plain HTTP to the TLS port: %d, want 400", code)
	}
	// TLS 1.1 is refused at the handshake.
	old := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.pool, MaxVersion: tls.VersionTLS11}}
	t.Cleanup(old.CloseIdleConnections)
	if resp, err := (&http.Client{Transport: old, Timeout: 10 * time.Second}).Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		t.Errorf("a TLS 1.1 client got %s, want a failed handshake", resp.Status)
	}
}

// TestPullHtpasswdSources: pull_htpasswd from YAML, the environment over
// YAML, the flag over the environment.
func TestPullHtpasswdSources(t *testing.T) {
	file := writeFile(t, t.TempDir(), "c.yaml", "htpasswd: /f/h\npull_htpasswd: /f/p\n")
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{env: map[string]string{"IMGMESH_CONFIG": file}, want: "/f/p"},
		{env: map[string]string{"IMGMESH_CONFIG": file, "IMGMESH_PULL_HTPASSWD": "/e/p"}, want: "/e/p"},
		{env: map[string]string{"IMGMESH_CONFIG": file, "IMGMESH_PULL_HTPASSWD": "/e/p"}, args: []string{"--pull-htpasswd", "/a/p"}, want: "/a/p"},
	} {
		cfg, err := parseServe(t, tc.env, tc.args...)
		if err != nil || cfg.PullHtpasswd != tc.want {
			t.Errorf("%v %v: %q %v, want %q", tc.env, tc.args, cfg.PullHtpasswd, err, tc.want)
		}
	}
}
