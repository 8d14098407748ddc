package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestPullThroughOncePerBlob: concurrent cold requests for one large blob
// all get the right bytes, and the upstream serves the blob once.
func TestPullThroughOncePerBlob(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	up := startUpstream(t)
	const size = 32 << 20
	layer, data := randomBlob(t, size)
	up.pushBlob(ctx, t, "test/big", layer)
	d := sha256Digest(data)
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--restrict-upstreams")
	c := httpClient(t)

	const clients = 8
	results := make([]hashed, clients)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		wg.Go(func() {
			<-start
			results[i] = getHashed(ctx, c, n.url("/v2/test/big/blobs/"+d))
		})
	}
	close(start)
	wg.Wait()
	for i, r := range results {
		if r.err != nil || r.status != http.StatusOK {
			t.Errorf("client %d: status %d, error %v", i, r.status, r.err)
			continue
		}
		if r.digest != d || r.size != size {
			t.Errorf("client %d: got %d bytes with digest %s, want %d bytes %s", i, r.size, r.digest, size, d)
		}
	}

	s := up.proxy.Stats()
	if s.BlobGets[d] != 1 {
		t.Errorf("upstream served %d GETs of the blob to %d concurrent clients, want exactly 1", s.BlobGets[d], clients)
	}
	if s.BlobBytes[d] != size {
		t.Errorf("upstream sent %d blob bytes, want %d (the blob once)", s.BlobBytes[d], size)
	}
	t.Logf("%d clients, upstream blob GETs %d, upstream bytes %d", clients, s.BlobGets[d], s.BlobBytes[d])

	// Warm: served from the store, upstream not asked again.
	r := n.getBlob(ctx, t, c, "test/big", d)
	if r.status != http.StatusOK || sha256Digest(r.body) != d {
		t.Errorf("warm GET: status %d, digest %s", r.status, sha256Digest(r.body))
	}
	if got := up.proxy.Stats().BlobGets[d]; got != 1 {
		t.Errorf("warm GET went upstream: %d blob GETs", got)
	}
}

// hashed is what a client saw of a GET, the body hashed as it arrived.
type hashed struct {
	status int
	size   int64
	digest string
	err    error // no response, or the body was cut short
}

// getHashed GETs url, hashing the body without keeping it.
func getHashed(ctx context.Context, c *http.Client, url string) hashed {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return hashed{err: err}
	}
	resp, err := c.Do(req)
	if err != nil {
		return hashed{err: err}
	}
	defer resp.Body.Close()
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	return hashed{status: resp.StatusCode, size: n, digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), err: err}
}

// TestPullThroughStreams: a cold blob reaches the client while the upstream
// is still sending it (the node streams, it does not download first).
func TestPullThroughStreams(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	up := startUpstream(t)
	const size = 4 << 20
	layer, data := randomBlob(t, size)
	up.pushBlob(ctx, t, "test/stream", layer)
	d := sha256Digest(data)
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--restrict-upstreams")
	release := up.proxy.Gate(t, d)

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url("/v2/test/stream/blobs/"+d), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := httpClient(t).Do(req)
	if err != nil {
		t.Fatalf("GET while upstream has sent half the blob: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s", resp.Status)
	}
	// Upstream holds back the second half until release: the first bytes
	// must arrive before that.
	first := make([]byte, 64<<10)
	got := make(chan error, 1)
	go func() {
		_, err := io.ReadFull(resp.Body, first)
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("reading the first bytes: %v", err)
		}
		if sent := up.proxy.Stats().BlobBytes[d]; sent >= size {
			t.Fatalf("upstream had sent all %d bytes before the client's first read: the gate did not hold", sent)
		}
	case <-time.After(15 * time.Second):
		release()
		<-got
		t.Fatal("no byte reached the client in 15s while upstream had sent half the blob: the node does not stream")
	}
	release()
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the rest: %v", err)
	}
	if all := append(first, rest...); sha256Digest(all) != d {
		t.Fatalf("streamed blob: %d bytes with digest %s, want %d bytes %s", len(all), sha256Digest(all), size, d)
	}
}

// TestLyingUpstream: a corrupted blob from upstream never reaches a client
// complete nor the store; once upstream is honest the blob is served.
func TestLyingUpstream(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	up := startUpstream(t)
	img := hostImage(t, ociImage, 1, 1<<20)
	mdigest := up.push(ctx, t, "test/lie:v1", img)
	rawM, _ := rawManifest(t, img)
	blobs := layerBytes(t, img)
	cfgDigest := configDigest(t, img)
	var layer string
	for d := range blobs {
		if d != cfgDigest {
			layer = d
		}
	}
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--restrict-upstreams")
	c := httpClient(t)

	// The config blob is pulled while upstream is honest: a local hit later.
	if r := n.getBlob(ctx, t, c, "test/lie", cfgDigest); r.status != http.StatusOK || !bytes.Equal(r.body, blobs[cfgDigest]) {
		t.Fatalf("honest GET of config: status %d, %d bytes", r.status, len(r.body))
	}

	up.proxy.SetMode(modeLying)
	r, err := do(ctx, c, http.MethodGet, n.url("/v2/test/lie/blobs/"+layer), nil)
	switch {
	case err != nil:
		t.Logf("lying upstream: client saw %v", err)
	case r.status == http.StatusOK && r.readErr == nil && len(r.body) == len(blobs[layer]):
		t.Fatalf("client received a complete blob (digest %s, want %s) from a lying upstream", sha256Digest(r.body), layer)
	default:
		t.Logf("lying upstream: client saw status %d, %d of %d bytes, body error %v", r.status, len(r.body), len(blobs[layer]), r.readErr)
	}
	if got := up.proxy.Stats().BlobGets[layer]; got < 1 {
		t.Fatalf("the node never asked upstream for the layer (%d GETs): the lie was not exercised", got)
	}
	assertNotStored(t, n.dataDir, layer)

	// The node keeps serving what it can: manifests, local blobs, health.
	if r := n.getManifest(ctx, t, c, "test/lie", "v1"); r.status != http.StatusOK || !bytes.Equal(r.body, rawM) {
		t.Errorf("manifest by tag during the lie: status %d", r.status)
	}
	if r := n.getManifest(ctx, t, c, "test/lie", mdigest); r.status != http.StatusOK || !bytes.Equal(r.body, rawM) {
		t.Errorf("manifest by digest during the lie: status %d", r.status)
	}
	if r := n.getBlob(ctx, t, c, "test/lie", cfgDigest); r.status != http.StatusOK || !bytes.Equal(r.body, blobs[cfgDigest]) {
		t.Errorf("local config blob during the lie: status %d", r.status)
	}
	if r := mustDo(ctx, t, c, http.MethodGet, n.url("/healthz"), nil); r.status != http.StatusOK {
		t.Errorf("/healthz after the lie: %d", r.status)
	}
	assertNotStored(t, n.dataDir, layer)

	up.proxy.SetMode(modeHonest)
	r = n.getBlob(ctx, t, c, "test/lie", layer)
	if r.status != http.StatusOK || r.readErr != nil || !bytes.Equal(r.body, blobs[layer]) {
		t.Fatalf("GET after upstream turned honest: status %d, %d bytes, digest %s, body error %v",
			r.status, len(r.body), sha256Digest(r.body), r.readErr)
	}
	// Committed once verified; the rename may trail the last byte a little.
	poll(t, "blob in the store after an honest pull", 10*time.Second, nil, func() error {
		if _, ok := storedBlobs(t, n.dataDir)[layer]; !ok {
			return fmt.Errorf("no file for %s under %s", layer, storeRoot(n.dataDir))
		}
		return nil
	})
}

// TestUpstreamDownServesLocal: once pulled, an image stays pullable by tag
// and digest while the upstream is down, also after the node restarts.
func TestUpstreamDownServesLocal(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 2*time.Minute)
	up := startUpstream(t)
	img := hostImage(t, dockerImage, 2, 256<<10)
	mdigest := up.push(ctx, t, "test/down:v1", img)
	n := startNode(t, "", "--upstream", up.Host()+"="+up.URL(), "--restrict-upstreams")
	c := httpClient(t)

	pullAll := func(stage string) {
		t.Helper()
		for _, tc := range []struct{ name, ref, query string }{
			{name: "tag", ref: "v1"},
			{name: "tag with ns", ref: "v1", query: "?ns=" + up.Host()},
			{name: "digest", ref: mdigest},
		} {
			begin := time.Now()
			r := n.getManifest(ctx, t, c, "test/down", tc.ref+tc.query)
			if r.status != http.StatusOK || r.header.Get("Docker-Content-Digest") != mdigest || sha256Digest(r.body) != mdigest {
				t.Errorf("%s: manifest by %s: status %d, Docker-Content-Digest %q, body digest %s, want %s",
					stage, tc.name, r.status, r.header.Get("Docker-Content-Digest"), sha256Digest(r.body), mdigest)
			}
			if el := time.Since(begin); el > 5*time.Second {
				t.Errorf("%s: manifest by %s took %s (tag timeout is 1s)", stage, tc.name, el)
			}
		}
		for d, b := range layerBytes(t, img) {
			r := n.getBlob(ctx, t, c, "test/down", d)
			if r.status != http.StatusOK || r.readErr != nil || !bytes.Equal(r.body, b) {
				t.Errorf("%s: blob %s: status %d, %d of %d bytes, body error %v", stage, d, r.status, len(r.body), len(b), r.readErr)
			}
		}
	}
	pullAll("upstream up")
	if t.Failed() {
		t.FailNow()
	}
	pulled := up.proxy.Stats()

	up.proxy.SetMode(modeDown503)
	pullAll("upstream answers 503")
	n.restart(t)
	pullAll("after restart, upstream answers 503")
	up.proxy.SetMode(modeDownClose)
	pullAll("upstream closes connections")

	// Content named by digest is never asked of the upstream again.
	after := up.proxy.Stats()
	for path, hits := range after.Hits {
		if (strings.Contains(path, "/blobs/") || path == "/v2/test/down/manifests/"+mdigest) && hits != pulled.Hits[path] {
			t.Errorf("%s asked of upstream %d more times after the first pull", path, hits-pulled.Hits[path])
		}
	}
	if after.Requests == pulled.Requests {
		t.Errorf("the node never asked upstream for the tag while it was down (want: upstream first, local index as fallback)")
	}
}

// storeRoot is where the node keeps verified blobs.
func storeRoot(dataDir string) string { return filepath.Join(dataDir, "blobs") }

var hexName = regexp.MustCompile(`^[a-f0-9]{64}$`)

// storedBlobs walks DATA/blobs and returns the digest of every file named
// by a sha256 hex; it fails the test if one's content does not match.
func storedBlobs(t *testing.T, dataDir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(storeRoot(dataDir), func(path string, de os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if de.IsDir() || !hexName.MatchString(de.Name()) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		d := "sha256:" + de.Name()
		if got := sha256Digest(b); got != d {
			t.Errorf("store file %s holds content with digest %s", path, got)
		}
		out[d] = path
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("walk store: %v", err)
	}
	return out
}

// assertNotStored fails if the store holds a file for d.
func assertNotStored(t *testing.T, dataDir, d string) {
	t.Helper()
	if path, ok := storedBlobs(t, dataDir)[d]; ok {
		t.Errorf("blob %s is in the store (%s) although upstream lied about it", d, path)
	}
}

// configDigest is the digest of img's config blob.
func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}
