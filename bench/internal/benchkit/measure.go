package benchkit

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

// Blob is a test blob on disk.
type Blob struct {
	Path   string
	Size   int64
	Digest string // sha256:…
}

// MakeBlob writes size random bytes (ChaCha8: fast, incompressible) to path
// and returns the blob with its digest.
func MakeBlob(path string, size int64) (Blob, error) {
	f, err := os.Create(path)
	if err != nil {
		return Blob{}, err
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
			return Blob{}, fmt.Errorf("write blob: %w", err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return Blob{}, fmt.Errorf("write blob: %w", err)
	}
	return Blob{Path: path, Size: size, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}, nil
}

// NewClient is an HTTP client for loopback: no proxy, no compression,
// keep-alive. Every request it sends carries its own deadline.
func NewClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      64 << 10,
		WriteBufferSize:     64 << 10,
	}}
}

// ErrShort marks a body that ended before the expected size.
var ErrShort = errors.New("short body")

// Get fetches url into a 1 MiB buffer, hashing it when verify is set, and
// returns the time from sending the request to the last byte. The body must
// be exactly size bytes, and with verify hash to dgst.
func Get(ctx context.Context, client *http.Client, url string, size int64, dgst string, verify bool, timeout time.Duration) (time.Duration, error) {
	t, err := GetSplit(ctx, client, url, size, dgst, verify, timeout)
	return t.All, err
}

// Timing is one GET: to the last byte, and to the last TailBytes (a node
// streaming a download holds the last byte back until the blob verified
// and is stored; buffers on the way may hold a few KiB more).
type Timing struct{ All, BeforeTail time.Duration }

// TailBytes is the end of a body whose arrival GetSplit times apart.
const TailBytes = 1 << 20

// GetSplit is Get that also times the arrival of all but the last
// TailBytes (all but the last byte of a smaller body).
func GetSplit(ctx context.Context, client *http.Client, url string, size int64, dgst string, verify bool, timeout time.Duration) (Timing, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Timing{}, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return Timing{}, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return Timing{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	var t Timing
	n, err := ReadAll(resp.Body, h, TailMark(size), func() { t.BeforeTail = time.Since(start) })
	if err != nil {
		return Timing{}, fmt.Errorf("GET %s after %d bytes: %w", url, n, err)
	}
	t.All = time.Since(start)
	if n != size {
		return Timing{}, fmt.Errorf("GET %s: %w: %d bytes, want %d", url, ErrShort, n, size)
	}
	if h != nil {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != dgst {
			return Timing{}, fmt.Errorf("GET %s: body hashes to %s, want %s", url, got, dgst)
		}
	}
	return t, nil
}

// TailMark is how many bytes of a size-byte body come before its tail.
func TailMark(size int64) int64 {
	if size > 2*TailBytes {
		return size - TailBytes
	}
	return max(size-1, 0)
}

// ReadAll reads r to EOF through a 1 MiB buffer (io.Discard's ReadFrom
// would read in 8 KiB steps), writing to h when not nil, and counts bytes.
// at, when not nil, is called once when mark bytes have arrived.
func ReadAll(r io.Reader, h hash.Hash, mark int64, at func()) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if h != nil {
			h.Write(buf[:n])
		}
		if at != nil && total >= mark {
			at()
			at = nil
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// TransferTimeout bounds one transfer of size bytes: 30 s plus 20 MB/s,
// slow enough for a busy machine, bounded for a stuck server.
func TransferTimeout(size int64) time.Duration {
	return 30*time.Second + time.Duration(float64(size)/20e6*float64(time.Second))
}

// Gbps is bytes per second in decimal gigabytes (1e9 bytes).
func Gbps(size int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(size) / d.Seconds() / 1e9
}

// Median of xs (0 when empty).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mid := len(s) / 2
	if len(s)%2 == 0 {
		return (s[mid-1] + s[mid]) / 2
	}
	return s[mid]
}
