package main

import (
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"time"
)

// blob is the test blob on disk.
type blob struct {
	path   string
	size   int64
	digest string // sha256:…
}

// makeBlob writes size random bytes (ChaCha8, fast and incompressible) to
// path and returns the blob with its digest.
func makeBlob(path string, size int64) (blob, error) {
	f, err := os.Create(path)
	if err != nil {
		return blob{}, err
	}
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails
	src := rand.NewChaCha8(seed)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		_, _ = src.Read(buf[:n]) // never fails
		h.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return blob{}, fmt.Errorf("write blob: %w", err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return blob{}, fmt.Errorf("write blob: %w", err)
	}
	return blob{path: path, size: size, digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}, nil
}

// newClient is the HTTP client of every measurement: loopback only, no
// proxy, no compression, keep-alive.
func newClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}}
}

// errShort marks a body that ended before the expected size.
var errShort = errors.New("short body")

// get fetches url and reads the body into a 1 MiB buffer, discarding it
// (or hashing it when verify is set), and returns the elapsed time from
// sending the request to the last byte. The body must be exactly size
// bytes, and with verify hash to digest.
func get(ctx context.Context, client *http.Client, url string, b blob, verify bool, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	buf := make([]byte, 1<<20)
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if h != nil {
			h.Write(buf[:m])
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("GET %s after %d bytes: %w", url, n, err)
		}
	}
	elapsed := time.Since(start)
	if n != b.size {
		return 0, fmt.Errorf("GET %s: %w: %d bytes, want %d", url, errShort, n, b.size)
	}
	if h != nil {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != b.digest {
			return 0, fmt.Errorf("GET %s: body hashes to %s, want %s", url, got, b.digest)
		}
	}
	return elapsed, nil
}

// gbps is bytes per second in decimal gigabytes (1e9 bytes).
func gbps(size int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(size) / d.Seconds() / 1e9
}

// stats is the median and the best of xs (0, 0 when empty).
func stats(xs []float64) (median, best float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mid := len(s) / 2
	median = s[mid]
	if len(s)%2 == 0 {
		median = (s[mid-1] + s[mid]) / 2
	}
	return median, s[len(s)-1]
}

// transferTimeout bounds one transfer of size bytes: 30 s plus 20 MB/s,
// slow enough for a busy machine, bounded for a stuck server.
func transferTimeout(size int64) time.Duration {
	return 30*time.Second + time.Duration(float64(size)/20e6*float64(time.Second))
}
