package dataplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/piece"
)

// Swarm routes, relative to a peer's data-plane base URL.
const (
	// PiecesPath + digest: GET the holder's piece.State of a blob it holds or
	// is downloading. Query: from (first piece hash wanted), after and wait
	// (answer once the holder has more than after pieces, or wait passed).
	PiecesPath = "/pieces/"
	// FetchPath + digest: POST ?ns=REGISTRY&repo=REPO asks the node to fetch
	// the blob from its own upstream for the fleet (it was ranked first).
	FetchPath = "/fetch/"
	// maxWait bounds a long poll of PiecesPath.
	maxWait = 2 * time.Second
)

var (
	// ErrBusy: the peer serves as many bodies as it allows; ask another.
	ErrBusy = errors.New("peer busy")
	// ErrPieceSent: a seed just sent this piece to another member; get it
	// from that member, or ask the seed for another piece. It wraps ErrBusy.
	ErrPieceSent = fmt.Errorf("%w: piece just sent to another member", ErrBusy)
)

// Swarm is what the server asks the node about blobs beyond its store:
// pieces of downloads in flight, piece hashes, and fetches for the fleet.
type Swarm interface {
	// Pieces returns the state of d (held or downloading); with wait > 0 it
	// first waits up to wait for more than after pieces. blobstore.ErrNotFound
	// if the node neither holds nor downloads d.
	Pieces(ctx context.Context, d digest.Digest, from, after int, wait time.Duration) (piece.State, error)
	// ReadAt reads verified bytes of a download in flight; an error if any
	// byte of the range is not held.
	ReadAt(ctx context.Context, d digest.Digest, p []byte, off int64) (int, error)
	// Fetch starts fetching d of ns/repo from the node's upstream, for the
	// fleet, and returns once it started (or failed to).
	Fetch(ctx context.Context, d digest.Digest, ns, repo string) error
}

// pieces serves GET /pieces/<digest>.
func (s *server) pieces(w http.ResponseWriter, r *http.Request, ref string) {
	d := digest.Digest(ref)
	if err := blobstore.CheckDigest(d); err != nil || s.swarm == nil {
		fail(w, http.StatusNotFound, "no such blob")
		return
	}
	q := r.URL.Query()
	from, _ := strconv.Atoi(q.Get("from"))
	after, _ := strconv.Atoi(q.Get("after"))
	wait, _ := time.ParseDuration(q.Get("wait"))
	st, err := s.swarm.Pieces(r.Context(), d, max(from, 0), after, min(max(wait, 0), maxWait))
	if errors.Is(err, blobstore.ErrNotFound) {
		fail(w, http.StatusNotFound, "blob not held")
		return
	}
	if err != nil {
		fail(w, http.StatusServiceUnavailable, "pieces: "+err.Error())
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, st)
}

// partial serves a single byte range of a blob still downloading, if the
// node holds every piece of it.
func (s *server) partial(w http.ResponseWriter, r *http.Request, d digest.Digest) bool {
	if s.swarm == nil {
		return false
	}
	off, end, ok := parseRange(r.Header.Get("Range"))
	if !ok {
		return false
	}
	st, err := s.swarm.Pieces(r.Context(), d, piece.Count(end), 0, 0)
	if err != nil || end > st.Size || off >= end {
		return false
	}
	for i := int(off / piece.Size); i < piece.Count(end); i++ {
		if !st.Have.Has(i) {
			return false
		}
	}
	if st.Fetching { // this node brings d into the fleet from upstream
		sw, done := s.sendOnce(w, r, d, st.Size)
		if done == nil {
			return true
		}
		defer done()
		w = sw
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, end-1, st.Size))
	h.Set("Content-Length", strconv.FormatInt(end-off, 10))
	w.WriteHeader(http.StatusPartialContent)
	if r.Method == http.MethodHead {
		return true
	}
	pb := piece.Buffer()
	defer piece.Release(pb)
	buf := *pb
	for off < end {
		k, err := s.swarm.ReadAt(r.Context(), d, buf[:min(end-off, int64(len(buf)))], off)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return true
			}
			off += int64(k)
		}
		if (err != nil || k == 0) && off < end {
			panic(http.ErrAbortHandler) // the piece went away: cut the body, the peer asks elsewhere
		}
	}
	return true
}

// parseRange reads "bytes=a-b" (one closed range) as [a, b+1).
func parseRange(h string) (off, end int64, ok bool) {
	spec, found := strings.CutPrefix(h, "bytes=")
	first, last, found2 := strings.Cut(spec, "-")
	if !found || !found2 || strings.Contains(spec, ",") {
		return 0, 0, false
	}
	a, err1 := strconv.ParseInt(first, 10, 64)
	b, err2 := strconv.ParseInt(last, 10, 64)
	if err1 != nil || err2 != nil || a < 0 || b < a {
		return 0, 0, false
	}
	return a, b + 1, true
}

// fetch serves POST /fetch/<digest>?ns=&repo=.
func (s *server) fetch(w http.ResponseWriter, r *http.Request, ref string) {
	d := digest.Digest(ref)
	q := r.URL.Query()
	ns, repo := q.Get("ns"), q.Get("repo")
	if err := blobstore.CheckDigest(d); err != nil || !validRepoKey(repo) || strings.ContainsAny(ns, "/ ") {
		fail(w, http.StatusBadRequest, "want /fetch/<digest>?ns=<registry>&repo=<repository>")
		return
	}
	if s.swarm == nil {
		fail(w, http.StatusNotFound, "this node does not fetch for the fleet")
		return
	}
	if err := s.swarm.Fetch(r.Context(), d, ns, repo); err != nil {
		status := http.StatusBadGateway
		if errors.Is(err, blobstore.ErrNotFound) {
			status = http.StatusNotFound
		}
		s.log.LogAttrs(r.Context(), slog.LevelDebug, "data plane: fetch for the fleet",
			slog.String("digest", d.String()), slog.String("err", err.Error()))
		fail(w, status, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "fetching"})
}

// Pieces asks the peer at baseURL for its state of d: hashes from piece
// from on; with wait > 0 the peer answers once it holds more than after
// pieces, or wait passed.
func (c *Client) Pieces(ctx context.Context, baseURL string, d digest.Digest, from, after int, wait time.Duration) (piece.State, error) {
	path := fmt.Sprintf("%s%s?from=%d&after=%d&wait=%s", PiecesPath, d, from, after, wait)
	req, err := c.request(ctx, http.MethodGet, baseURL, path)
	if err != nil {
		return piece.State{}, err
	}
	resp, err := c.do(req, "pieces of "+d.String())
	if err != nil {
		return piece.State{}, err
	}
	defer resp.Body.Close()
	var st piece.State
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&st); err != nil {
		return piece.State{}, fmt.Errorf("pieces of %s from %s: %w: %w", d, baseURL, ErrPeer, err)
	}
	if err := st.Check(); err != nil {
		return piece.State{}, fmt.Errorf("pieces of %s from %s: %w: %w", d, baseURL, ErrPeer, err)
	}
	return st, nil
}

// Range opens bytes [off, end) of d at baseURL. The bytes are not verified.
func (c *Client) Range(ctx context.Context, baseURL string, d digest.Digest, off, end int64) (io.ReadCloser, error) {
	req, err := c.request(ctx, http.MethodGet, baseURL, BlobPath+d.String())
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", off, end-1))
	resp, err := c.do(req, d.String())
	if err != nil {
		return nil, err
	}
	cr := resp.Header.Get("Content-Range")
	if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != end-off ||
		!strings.HasPrefix(cr, fmt.Sprintf("bytes %d-%d/", off, end-1)) {
		drain(resp.Body)
		return nil, fmt.Errorf("range %d-%d of %s from %s: status %d, Content-Range %q: %w", off, end, d, baseURL, resp.StatusCode, cr, ErrPeer)
	}
	return &peerBody{rc: resp.Body, what: "blob " + d.String() + " from " + baseURL}, nil
}

// Fetch asks the peer at baseURL to fetch d of ns/repo from its upstream.
func (c *Client) Fetch(ctx context.Context, baseURL string, d digest.Digest, ns, repo string) error {
	q := url.Values{"ns": {ns}, "repo": {repo}}
	req, err := c.request(ctx, http.MethodPost, baseURL, FetchPath+d.String()+"?"+q.Encode())
	if err != nil {
		return err
	}
	resp, err := c.do(req, "fetch of "+d.String())
	if err != nil {
		return err
	}
	drain(resp.Body)
	return nil
}
