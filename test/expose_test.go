package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// TestExposedSeed: a seed node with TLS and basic auth takes pushes and
// serves pulls from skopeo with credentials only, and a device node that
// names it as its upstream (a pull-only account's credentials from a docker
// config.json, the seed's CA from --upstream-ca) pulls an image through it;
// that account can neither push nor change the seed through its admin API.
func TestExposedSeed(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	requireTool(t, "skopeo")
	pki := newSeedPKI(t)
	const user, password = "tech", "s3cret-pw"
	const puller, pullPassword = "device", "pull-only-pw"
	seed := startTLSNode(t, pki, "--upstream", "none", "--htpasswd", htpasswd(t, user, password),
		"--pull-htpasswd", htpasswd(t, puller, pullPassword))

	img := hostImage(t, ociImage, 2, 128<<10)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	src, policy := ociLayout(t, img, "v1"), skopeoPolicy(t)
	// skopeo trusts the CA certificates (*.crt) of a cert dir.
	certDir := t.TempDir()
	copyFile(t, pki.caFile, filepath.Join(certDir, "ca.crt"))
	// An empty auth file: nothing from the user's own login may leak in.
	authFile := filepath.Join(t.TempDir(), "auth.json")
	if err := os.WriteFile(authFile, []byte(`{"auths":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	seedRef := "docker://" + seed.addr + "/plant/app:v1"
	skopeo := func(args ...string) (string, error) {
		return run(ctx, t, append([]string{"skopeo", "--policy", policy, "copy", "--preserve-digests", "--authfile", authFile}, args...)...)
	}

	t.Run("push without or with wrong credentials is refused", func(t *testing.T) {
		for _, creds := range [][]string{{"--dest-no-creds"}, {"--dest-creds", user + ":wrong"}, {"--dest-creds", "nobody:" + password}} {
			out, err := skopeo(append(creds, "--dest-cert-dir", certDir, "oci:"+src+":v1", seedRef)...)
			if err == nil || !unauthorized(out) {
				t.Fatalf("push with %v: err %v, want an authentication failure:\n%s", creds, err, out)
			}
		}
	})
	t.Run("push and pull with credentials", func(t *testing.T) {
		mustRun(ctx, t, "skopeo", "--policy", policy, "copy", "--authfile", authFile, "--preserve-digests",
			"--dest-creds", user+":"+password, "--dest-cert-dir", certDir, "oci:"+src+":v1", seedRef)
		out := t.TempDir()
		if _, err := skopeo("--src-creds", user+":"+password, "--src-cert-dir", certDir, seedRef, "oci:"+out+":v1"); err != nil {
			t.Fatal(err)
		}
		if got := layoutEntry(t, out, "v1"); got.Digest != d {
			t.Fatalf("pulled %s from the seed, pushed %s", got.Digest, d)
		}
	})
	t.Run("pull without credentials is refused", func(t *testing.T) {
		out, err := skopeo("--src-no-creds", "--src-cert-dir", certDir, seedRef, "oci:"+t.TempDir()+":v1")
		if err == nil || !unauthorized(out) {
			t.Fatalf("anonymous skopeo pull: err %v, want an authentication failure:\n%s", err, out)
		}
		r := mustDo(ctx, t, tlsClient(t, pki), http.MethodGet, "https://"+seed.addr+"/v2/plant/app/manifests/"+d.String(), manifestAccept)
		if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Basic realm="imgmesh"` ||
			!strings.Contains(string(r.body), `"UNAUTHORIZED"`) {
			t.Fatalf("anonymous GET of the manifest: %d, WWW-Authenticate %q, %s; want 401 with a Basic challenge",
				r.status, r.header.Get("WWW-Authenticate"), r.body)
		}
	})

	t.Run("pull-only account cannot push or remove", func(t *testing.T) {
		out, err := skopeo("--dest-creds", puller+":"+pullPassword, "--dest-cert-dir", certDir, "oci:"+src+":v1",
			"docker://"+seed.addr+"/plant/other:v1")
		if err == nil || !strings.Contains(strings.ToLower(out), "denied") {
			t.Fatalf("push with the pull-only account: err %v, want access denied:\n%s", err, out)
		}
		rm := fmt.Sprintf("https://%s:%s@%s/api/v1/images/rm", puller, pullPassword, seed.addr)
		r := mustDo(ctx, t, tlsClient(t, pki), http.MethodPost, rm, map[string]string{"Content-Type": "application/json"})
		if r.status != http.StatusForbidden || !strings.Contains(string(r.body), `"DENIED"`) {
			t.Fatalf("images rm with the pull-only account: %d %s, want 403 DENIED", r.status, r.body)
		}
		pulled := t.TempDir()
		if _, err := skopeo("--src-creds", puller+":"+pullPassword, "--src-cert-dir", certDir, seedRef, "oci:"+pulled+":v1"); err != nil {
			t.Fatalf("pull with the pull-only account: %v", err)
		}
		if got := layoutEntry(t, pulled, "v1"); got.Digest != d {
			t.Fatalf("pulled %s with the pull-only account, pushed %s", got.Digest, d)
		}
	})

	upstream := "seed.local=https://" + seed.addr
	t.Run("device pulls through the seed", func(t *testing.T) {
		dockerConfig := writeDockerConfig(t, "seed.local", puller, pullPassword)
		device := startNode(t, "", "--upstream", upstream, "--restrict-upstreams",
			"--docker-config", dockerConfig, "--upstream-ca", pki.caFile)
		out := t.TempDir()
		if _, err := skopeo("--src-tls-verify=false", "docker://"+device.addr+"/plant/app:v1", "oci:"+out+":v1"); err != nil {
			t.Fatal(err)
		}
		if got := layoutEntry(t, out, "v1"); got.Digest != d {
			t.Fatalf("pulled %s through the device, pushed %s", got.Digest, d)
		}
		if !strings.Contains(device.proc.log(t), `"seed.local"`) {
			t.Errorf("the device's log never names its seed.local upstream")
		}
	})
	for _, tc := range []struct {
		name, why string
		args      []string
	}{
		{name: "device without credentials gets nothing", why: "401",
			args: []string{"--upstream-ca", pki.caFile}},
		{name: "device without the seed's CA gets nothing", why: "certificate signed by unknown authority",
			args: []string{"--docker-config", writeDockerConfig(t, "seed.local", user, password)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			device := startNode(t, "", append([]string{"--upstream", upstream, "--restrict-upstreams"}, tc.args...)...)
			r := mustDo(ctx, t, httpClient(t), http.MethodGet, device.url("/v2/plant/app/manifests/"+d.String()), manifestAccept)
			if r.status == http.StatusOK {
				t.Fatalf("the device pulled the manifest")
			}
			if log := device.proc.log(t); !strings.Contains(log, tc.why) {
				t.Errorf("the device's log does not say %q:\n%s", tc.why, device.proc.tail(10))
			}
		})
	}
}

// TestExposedRefusesOpenListen: a node asked to listen on every interface
// without --htpasswd exits 1 with one line that names --insecure, and
// creates no data directory.
func TestExposedRefusesOpenListen(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	dataDir := filepath.Join(t.TempDir(), "data")
	cmd := exec.CommandContext(ctx, imgmeshBin, "serve", "--mesh=false", "--upstream", "none",
		"--listen", fmt.Sprintf("0.0.0.0:%d", freePort(t)), "--data-dir", dataDir)
	cmd.Env = append(os.Environ(), noInternet...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("serve on 0.0.0.0 without --htpasswd: %v, want exit code 1:\n%s", err, out)
	}
	if strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), "--insecure") || !strings.Contains(string(out), "--htpasswd") {
		t.Errorf("want one line naming --htpasswd and --insecure, got:\n%s", out)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data dir created by a node that refused to start (%v)", err)
	}
}

// unauthorized reports whether a client's output says it was refused for
// missing or wrong credentials.
func unauthorized(out string) bool {
	out = strings.ToLower(out)
	return strings.Contains(out, "unauthorized") || strings.Contains(out, "authentication required")
}

// seedPKI is a CA and a server certificate for 127.0.0.1 it signed.
type seedPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

func newSeedPKI(t *testing.T) seedPKI {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "imgmesh e2e CA"},
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
	leafDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return seedPKI{
		caFile:   write("ca.pem", "CERTIFICATE", caDER),
		certFile: write("cert.pem", "CERTIFICATE", leafDER),
		keyFile:  write("key.pem", "PRIVATE KEY", keyDER),
		pool:     pool,
	}
}

// tlsClient trusts the test CA only.
func tlsClient(t *testing.T, pki seedPKI) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: pki.pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// startTLSNode runs `imgmesh serve` with the test certificate on a free port
// and waits until /readyz answers 200 over HTTPS (without credentials:
// probes stay open).
func startTLSNode(t *testing.T, pki seedPKI, extra ...string) *imgmeshNode {
	t.Helper()
	n := &imgmeshNode{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), dataDir: t.TempDir()}
	n.args = append([]string{"serve", "--mesh=false", "--data-dir", n.dataDir, "--listen", n.addr,
		"--log-format", "json", "--log-level", "debug", "--tls-cert", pki.certFile, "--tls-key", pki.keyFile}, extra...)
	p := startProc(t, "imgmesh-seed", noInternet, append([]string{imgmeshBin}, n.args...)...)
	n.proc = p
	t.Cleanup(func() {
		if err := p.stop(t); err != nil {
			t.Errorf("imgmesh seed (pid %d) did not exit cleanly on SIGTERM: %v", p.pid, err)
		}
		if strings.Contains(p.log(t), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in the seed (pid %d):\n%s", p.pid, raceReport(p.log(t)))
		}
	})
	c := tlsClient(t, pki)
	poll(t, "seed /readyz over HTTPS", 20*time.Second, p, func() error {
		r, err := do(context.Background(), c, http.MethodGet, "https://"+n.addr+"/readyz", nil)
		if err != nil {
			return err
		}
		if r.status != http.StatusOK {
			return fmt.Errorf("GET /readyz: %d", r.status)
		}
		return nil
	})
	return n
}

func htpasswd(t *testing.T, user, password string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "htpasswd")
	if err := os.WriteFile(p, []byte("# imgmesh e2e\n"+user+":"+string(h)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeDockerConfig writes a docker config.json with credentials for registry.
func writeDockerConfig(t *testing.T, registry, user, password string) string {
	t.Helper()
	auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
	p := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(p, []byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, registry, auth)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}
