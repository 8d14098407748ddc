package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
)

// repo is the repository the blob is pushed to and pulled from.
const repo = "bench/blob"

// readyTimeout bounds how long a server may take to start.
const readyTimeout = 20 * time.Second

// startNode starts `imgmesh serve` on a free loopback port with its data in
// dir; upstream is "" (no upstream) or a NAME=URL pair.
func startNode(ctx context.Context, ps *benchkit.Procs, bin, name, dir, upstream string) (*benchkit.Proc, string, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	up := "none"
	if upstream != "" {
		up = upstream
	}
	p, err := ps.Start(name, dir+".log", bin, "serve", "--mesh=false",
		"--data-dir", dir, "--listen", "127.0.0.1:"+strconv.Itoa(port),
		"--upstream", up, "--restrict-upstreams", "--log-level", "warn")
	if err != nil {
		return nil, "", err
	}
	return p, base, benchkit.WaitReady(ctx, p, base+"/v2/", readyTimeout)
}

// startRegistry starts Debian's docker-registry (distribution 2.8.2) with
// filesystem storage under dir.
func startRegistry(ctx context.Context, ps *benchkit.Procs, bin, dir string) (*benchkit.Proc, string, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: 127.0.0.1:%d
`, filepath.Join(dir, "data"), port)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	confPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, "", fmt.Errorf("registry config: %w", err)
	}
	p, err := ps.Start("docker-registry", filepath.Join(dir, "registry.log"), bin, "serve", confPath)
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	return p, base, benchkit.WaitReady(ctx, p, base+"/v2/", readyTimeout)
}

// startNginx serves blobFile as /blob from nginx with sendfile, as one
// foreground process whose pid, logs and temp paths are all under dir.
func startNginx(ctx context.Context, ps *benchkit.Procs, bin, dir, blobFile string) (*benchkit.Proc, string, error) {
	port, err := benchkit.FreePort()
	if err != nil {
		return nil, "", err
	}
	www := filepath.Join(dir, "www")
	for _, d := range []string{www, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, "", err
		}
	}
	// A hard link shares the page cache with the source; copy otherwise.
	if err := os.Link(blobFile, filepath.Join(www, "blob")); err != nil {
		if err := copyFile(blobFile, filepath.Join(www, "blob")); err != nil {
			return nil, "", err
		}
	}
	t := filepath.Join(dir, "tmp")
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 64; }
http {
  access_log %[1]s/access.log;
  sendfile on;
  tcp_nopush on;
  default_type application/octet-stream;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  server {
    listen 127.0.0.1:%[3]d;
    root %[4]s;
  }
}
`, dir, t, port, www)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, "", fmt.Errorf("nginx config: %w", err)
	}
	p, err := ps.Start("nginx", filepath.Join(dir, "stderr.log"), bin,
		"-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", confPath)
	if err != nil {
		return nil, "", err
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	return p, base, benchkit.WaitReady(ctx, p, base+"/", readyTimeout)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// push uploads the blob to a registry's API: POST to open an upload, then
// one PUT with the whole body and ?digest= to commit it.
func push(ctx context.Context, client *http.Client, base string, b benchkit.Blob, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := base + "/v2/" + repo + "/blobs/uploads/"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, start, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("open upload: %w", err)
	}
	if err := expect(resp, http.StatusAccepted); err != nil {
		return fmt.Errorf("open upload: %w", err)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return fmt.Errorf("upload location: %w", err)
	}
	u, _ := url.Parse(start)
	u = u.ResolveReference(loc)
	q := u.Query()
	q.Set("digest", b.Digest)
	u.RawQuery = q.Encode()

	f, err := os.Open(b.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	req, err = http.NewRequestWithContext(ctx, http.MethodPut, u.String(), f)
	if err != nil {
		return err
	}
	req.ContentLength = b.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = client.Do(req)
	if err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	if err := expect(resp, http.StatusCreated); err != nil {
		return fmt.Errorf("upload: %w", err)
	}
	return nil
}

// expect drains and closes resp and fails unless it has status want.
func expect(resp *http.Response, want int) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != want {
		return fmt.Errorf("status %s, want %d: %s", resp.Status, want, strings.TrimSpace(string(body)))
	}
	return nil
}

// blobURL is where base serves the blob through the registry API.
func blobURL(base string, b benchkit.Blob) string {
	return base + "/v2/" + repo + "/blobs/" + b.Digest
}
