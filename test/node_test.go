package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// noInternet points the node's proxy settings at a dead local port, so a
// default upstream (docker.io) can never reach the internet from a test;
// loopback upstreams are never proxied.
var noInternet = []string{
	"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9",
	"http_proxy=http://127.0.0.1:9", "https_proxy=http://127.0.0.1:9",
	"NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost",
	"DOCKER_CONFIG=/nonexistent",
}

// Metric names of the node (registryapi/metrics.go).
const (
	metricBytesServed = "imgmesh_registry_blob_bytes_served_total" // {source}
	metricRequests    = "imgmesh_registry_requests_total"          // {route,method,code}
)

// imgmeshNode is one `imgmesh serve` process.
type imgmeshNode struct {
	addr    string // 127.0.0.1:port
	dataDir string
	args    []string
	proc    *proc
	nofile  int // >0: the node's open-file limit (ulimit -n)
}

// startNode runs `imgmesh serve` on a free port with data in dataDir (a new
// temp dir when empty) and extra flags, and waits until /readyz says 200.
func startNode(t *testing.T, dataDir string, extra ...string) *imgmeshNode {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	n := &imgmeshNode{
		addr:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		dataDir: dataDir,
	}
	// A 5 s tag budget: under -race with the e2e tests in parallel, the
	// first upstream request (token dance included) took 0.8 s of a 1 s
	// budget, and a tag fell back to the empty local index (404).
	n.args = append([]string{"serve", "--mesh=false", "--data-dir", dataDir, "--listen", n.addr,
		"--log-format", "json", "--log-level", "debug", "--tag-timeout", "5s"}, extra...)
	n.start(t)
	return n
}

func (n *imgmeshNode) start(t *testing.T) {
	t.Helper()
	argv := append([]string{imgmeshBin}, n.args...)
	if n.nofile > 0 { // the shell execs the node: same PID, the limit set
		argv = append([]string{"bash", "-c", fmt.Sprintf(`ulimit -n %d && exec "$0" "$@"`, n.nofile)}, argv...)
	}
	p := startProc(t, "imgmesh", noInternet, argv...)
	n.proc = p
	t.Cleanup(func() {
		// Runs before startProc's cleanup stops the node: stop it here so
		// the whole log (a race report comes at exit too) is read.
		if err := p.stop(t); err != nil {
			t.Errorf("imgmesh (pid %d) did not exit cleanly on SIGTERM: %v", p.pid, err)
		}
		if strings.Contains(p.log(t), "WARNING: DATA RACE") {
			t.Errorf("the race detector found a data race in imgmesh (pid %d):\n%s", p.pid, raceReport(p.log(t)))
		}
	})
	c := httpClient(t)
	poll(t, "imgmesh /readyz", 20*time.Second, n.proc, func() error {
		resp, err := c.Get(n.url("/readyz"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /readyz: %s", resp.Status)
		}
		return nil
	})
}

// raceReport cuts the first race report out of a log.
func raceReport(log string) string {
	i := strings.Index(log, "WARNING: DATA RACE")
	rest := log[i:]
	if j := strings.Index(rest, "=================="); j > 0 {
		rest = rest[:j]
	}
	return rest
}

// restart stops the node and starts it
// again with the same flags, data dir and port.
func (n *imgmeshNode) restart(t *testing.T) {
	t.Helper()
	_ = n.proc.stop(t) // a non-zero exit is reported at cleanup
	n.start(t)
}

func (n *imgmeshNode) url(path string) string { return "http://" + n.addr + path }

// response is what a client saw of one request.
type response struct {
	status  int
	header  http.Header
	body    []byte
	readErr error // the body ended with an error (cut short)
}

// do sends method to url and reads the whole body; a body cut short is
// reported in readErr, not as an error.
func do(ctx context.Context, c *http.Client, method, url string, header map[string]string) (response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return response{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return response{}, fmt.Errorf("%s %s: %w", method, url, err)
	}
	body, readErr := readAllClose(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, readErr: readErr}, nil
}

// mustDo is do that fails the test when no response arrived.
func mustDo(ctx context.Context, t *testing.T, c *http.Client, method, url string, header map[string]string) response {
	t.Helper()
	r, err := do(ctx, c, method, url, header)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// manifestAccept is what a pulling client sends.
var manifestAccept = map[string]string{"Accept": strings.Join([]string{
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
}, ", ")}

// getManifest GETs repo's manifest ref (tag or digest) from the node.
func (n *imgmeshNode) getManifest(ctx context.Context, t *testing.T, c *http.Client, repo, ref string) response {
	t.Helper()
	return mustDo(ctx, t, c, http.MethodGet, n.url("/v2/"+repo+"/manifests/"+ref), manifestAccept)
}

// getBlob GETs blob d of repo from the node.
func (n *imgmeshNode) getBlob(ctx context.Context, t *testing.T, c *http.Client, repo, d string) response {
	t.Helper()
	return mustDo(ctx, t, c, http.MethodGet, n.url("/v2/"+repo+"/blobs/"+d), nil)
}

func readAllClose(rc io.ReadCloser) ([]byte, error) {
	defer rc.Close()
	return io.ReadAll(rc)
}

// sample is one Prometheus series: name, labels and value.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metrics scrapes /metrics (Prometheus text format).
func (n *imgmeshNode) metrics(ctx context.Context, t *testing.T, c *http.Client) []sample {
	t.Helper()
	r := mustDo(ctx, t, c, http.MethodGet, n.url("/metrics"), nil)
	if r.status != http.StatusOK || r.readErr != nil {
		t.Fatalf("GET /metrics: %d %v", r.status, r.readErr)
	}
	var out []sample
	sc := bufio.NewScanner(strings.NewReader(string(r.body)))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out = append(out, s)
	}
	return out
}

// parseSample parses `name{a="b",c="d"} value`.
func parseSample(line string) (sample, error) {
	s := sample{labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(rest, "{ "); i < 0 {
		return s, fmt.Errorf("no value")
	} else {
		s.name, rest = rest[:i], rest[i:]
	}
	if strings.HasPrefix(rest, "{") {
		rest = rest[1:]
		for !strings.HasPrefix(rest, "}") {
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("bad labels")
			}
			key := strings.TrimLeft(rest[:eq], ",")
			rest = rest[eq+2:]
			var val strings.Builder
			for {
				if rest == "" {
					return s, fmt.Errorf("unterminated label value")
				}
				if rest[0] == '\\' && len(rest) > 1 {
					c := rest[1]
					if c == 'n' {
						c = '\n'
					}
					val.WriteByte(c)
					rest = rest[2:]
					continue
				}
				if rest[0] == '"' {
					rest = rest[1:]
					break
				}
				val.WriteByte(rest[0])
				rest = rest[1:]
			}
			s.labels[key] = val.String()
			rest = strings.TrimPrefix(rest, ",")
		}
		rest = rest[1:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.value = v
	return s, nil
}

// sum adds the values of every series of metric name whose labels include
// all of want.
func sum(samples []sample, name string, want map[string]string) float64 {
	var total float64
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for k, v := range want {
			if s.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			total += s.value
		}
	}
	return total
}

// names lists the distinct metric names scraped, for failure messages.
func names(samples []sample) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range samples {
		if !seen[s.name] {
			seen[s.name] = true
			out = append(out, s.name)
		}
	}
	return out
}
