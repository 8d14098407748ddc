package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"
)

// PullConcurrency is how many blobs one pull fetches at once (containerd's
// default max_concurrent_downloads).
const PullConcurrency = 3

// maxManifest bounds a manifest body.
const maxManifest = 4 << 20

// ErrVerify marks content that does not match its digest or size.
var ErrVerify = errors.New("content does not verify")

// Pull fetches repo:ref from the registry at base (http://host:port) as a
// runtime would: the manifest (which must have digest want, when set), then
// its config and layers, PullConcurrency at a time, each verified against
// its descriptor's size and digest. Every body byte is added to progress as
// it arrives; throttle, when set, paces the reads (a device link in the
// loopback simulation). It returns the bytes received.
func Pull(ctx context.Context, c *http.Client, base, repo, ref string, want digest.Digest, progress *atomic.Int64, throttle *Limiter) (int64, error) {
	body, err := get(ctx, c, base+"/v2/"+repo+"/manifests/"+ref, func(resp *http.Response) ([]byte, error) {
		return io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	}, v1.MediaTypeImageManifest, "application/vnd.docker.distribution.manifest.v2+json")
	if err != nil {
		return 0, err
	}
	progress.Add(int64(len(body)))
	got := digest.FromBytes(body)
	if len(body) > maxManifest || (want != "" && got != want) {
		return int64(len(body)), fmt.Errorf("manifest %s:%s: %w: %d bytes hashing to %s, want %s", repo, ref, ErrVerify, len(body), got, want)
	}
	var m v1.Manifest
	if err := json.Unmarshal(body, &m); err != nil {
		return int64(len(body)), fmt.Errorf("manifest %s:%s: %w", repo, ref, err)
	}
	var total atomic.Int64
	total.Add(int64(len(body)))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(PullConcurrency)
	for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		g.Go(func() error {
			n, err := pullBlob(gctx, c, base, repo, d, progress, throttle)
			total.Add(n)
			return err
		})
	}
	err = g.Wait()
	return total.Load(), err
}

// pullBlob GETs one blob and checks its size and digest.
func pullBlob(ctx context.Context, c *http.Client, base, repo string, d v1.Descriptor, progress *atomic.Int64, throttle *Limiter) (int64, error) {
	var n int64
	_, err := get(ctx, c, base+"/v2/"+repo+"/blobs/"+d.Digest.String(), func(resp *http.Response) ([]byte, error) {
		var r io.Reader = resp.Body
		if throttle != nil {
			r = limitedReader{ctx: ctx, r: r, l: throttle}
		}
		h := sha256.New()
		buf := make([]byte, 256<<10)
		for {
			m, err := r.Read(buf)
			h.Write(buf[:m])
			n += int64(m)
			progress.Add(int64(m))
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("after %d bytes: %w", n, err)
			}
			if n > d.Size {
				return nil, fmt.Errorf("%w: more than the %d bytes of the descriptor", ErrVerify, d.Size)
			}
		}
		if got := digest.NewDigest(digest.SHA256, h); n != d.Size || got != d.Digest {
			return nil, fmt.Errorf("%w: %d bytes hashing to %s, want %d bytes", ErrVerify, n, got, d.Size)
		}
		return nil, nil
	})
	return n, err
}

// get sends GET url and hands a 200 response to read.
func get(ctx context.Context, c *http.Client, url string, read func(*http.Response) ([]byte, error), accept ...string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	for _, a := range accept {
		req.Header.Add("Accept", a)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return nil, fmt.Errorf("GET %s: %s: %s", url, resp.Status, bytes.TrimSpace(msg))
	}
	b, err := read(resp)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return b, nil
}

// Push uploads img into the registry at base: each blob in one monolithic
// POST ?digest=, then the manifest under its tag.
func Push(ctx context.Context, c *http.Client, base string, img *Image) error {
	for _, d := range img.Order {
		url := base + "/v2/" + img.Repo + "/blobs/uploads/?digest=" + d.String()
		if err := send(ctx, c, http.MethodPost, url, "application/octet-stream", img.Blobs[d], http.StatusCreated); err != nil {
			return err
		}
	}
	url := base + "/v2/" + img.Repo + "/manifests/" + img.Tag
	return send(ctx, c, http.MethodPut, url, v1.MediaTypeImageManifest, img.Manifest, http.StatusCreated)
}

func send(ctx context.Context, c *http.Client, method, url, contentType string, body []byte, want int) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
