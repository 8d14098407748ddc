package dataplane

import (
	"context"
	"crypto/hmac"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

var (
	// ErrNotHeld: the peer does not hold the blob or tag (404).
	ErrNotHeld = errors.New("not held by peer")
	// ErrUnauthorized: the peer refused our fleet credentials (401), or a
	// tag answer carried no valid MAC.
	ErrUnauthorized = errors.New("unauthorized by peer")
	// ErrPeer: the peer could not be reached, failed (5xx), answered
	// something unexpected, or broke off mid-body. Try another holder.
	ErrPeer = errors.New("peer failed")
)

// Timeouts of the default transport: peers are on the LAN.
const (
	dialTimeout           = 300 * time.Millisecond
	responseHeaderTimeout = 2 * time.Second
	maxTagAnswer          = 4096
)

// ClientOptions configures NewClient.
type ClientOptions struct {
	// Key is fleetkey.Key.Derive(fleetkey.DataPlane); nil: open fleet,
	// requests are not signed.
	Key []byte
	// NodeID names this node in signed requests (e.g. its libp2p peer ID).
	NodeID string
	// Transport; nil: NewTransport().
	Transport http.RoundTripper
}

// Client fetches from peers' data planes. Safe for concurrent use.
type Client struct {
	key    []byte
	nodeID string
	hc     *http.Client
	now    func() time.Time
}

// NewClient returns a data-plane client.
func NewClient(opts ClientOptions) *Client {
	rt := opts.Transport
	if rt == nil {
		rt = NewTransport()
	}
	var key []byte
	if len(opts.Key) > 0 {
		key = append([]byte(nil), opts.Key...)
	}
	nodeID := opts.NodeID
	if !validNodeID(nodeID) {
		nodeID = unknownNode
	}
	return &Client{key: key, nodeID: nodeID, hc: &http.Client{Transport: rt}, now: time.Now}
}

// NewTransport returns the default transport, tuned for peers on a LAN:
// short dial and response-header timeouts (a dead peer costs milliseconds),
// keep-alive with several idle connections per peer, no proxy, no
// compression (blobs are compressed already and are read by range).
func NewTransport() *http.Transport {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           d.DialContext,
		ResponseHeaderTimeout: responseHeaderTimeout,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
		ReadBufferSize:        64 << 10,
		WriteBufferSize:       4 << 10,
	}
}

// CloseIdleConnections closes the transport's idle keep-alive connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Blob opens blob d at baseURL from byte offset on and returns its body
// (the bytes from offset to the end) and the blob's total size. offset must
// be below the size. The bytes are not verified: wrap the body with
// VerifyReader or commit it through a blobstore.Writer.
func (c *Client) Blob(ctx context.Context, baseURL string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	if err := blobstore.CheckDigest(d); err != nil {
		return nil, 0, err
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("blob %s: negative offset %d", d, offset)
	}
	req, err := c.request(ctx, http.MethodGet, baseURL, BlobPath+d.String())
	if err != nil {
		return nil, 0, err
	}
	if offset > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	resp, err := c.do(req, d.String())
	if err != nil {
		return nil, 0, err
	}
	total, err := blobSize(resp, offset)
	if err != nil {
		resp.Body.Close()
		return nil, 0, fmt.Errorf("blob %s from %s: %w: %w", d, baseURL, ErrPeer, err)
	}
	body := &peerBody{rc: resp.Body, what: "blob " + d.String() + " from " + baseURL}
	if resp.StatusCode == http.StatusOK && offset > 0 {
		// The peer ignored the range: skip to offset.
		if _, err := io.CopyN(io.Discard, body, offset); err != nil {
			body.Close()
			return nil, 0, err
		}
	}
	return body, total, nil
}

// blobSize checks a 200 or 206 answer to a request from offset and returns
// the blob's total size.
func blobSize(resp *http.Response, offset int64) (int64, error) {
	if resp.StatusCode == http.StatusOK {
		if resp.ContentLength < 0 || resp.ContentLength < offset {
			return 0, fmt.Errorf("bad length %d", resp.ContentLength)
		}
		return resp.ContentLength, nil
	}
	// 206: Content-Range: bytes <first>-<last>/<total>
	cr, ok := strings.CutPrefix(resp.Header.Get("Content-Range"), "bytes ")
	rng, totalText, ok2 := strings.Cut(cr, "/")
	first, last, ok3 := strings.Cut(rng, "-")
	if !ok || !ok2 || !ok3 {
		return 0, fmt.Errorf("bad Content-Range %q", resp.Header.Get("Content-Range"))
	}
	f, err1 := strconv.ParseInt(first, 10, 64)
	l, err2 := strconv.ParseInt(last, 10, 64)
	total, err3 := strconv.ParseInt(totalText, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || f != offset || l != total-1 || l < f ||
		(resp.ContentLength >= 0 && resp.ContentLength != total-offset) {
		return 0, fmt.Errorf("Content-Range %q does not answer bytes=%d-", cr, offset)
	}
	return total, nil
}

// Stat returns the size of blob d at baseURL (HEAD).
func (c *Client) Stat(ctx context.Context, baseURL string, d digest.Digest) (int64, error) {
	if err := blobstore.CheckDigest(d); err != nil {
		return 0, err
	}
	req, err := c.request(ctx, http.MethodHead, baseURL, BlobPath+d.String())
	if err != nil {
		return 0, err
	}
	resp, err := c.do(req, d.String())
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 {
		return 0, fmt.Errorf("stat %s at %s: status %d, length %d: %w", d, baseURL, resp.StatusCode, resp.ContentLength, ErrPeer)
	}
	return resp.ContentLength, nil
}

// Tag asks the peer at baseURL which manifest repoKey:tag points at in its
// local index (repoKey as node.Key: "docker.io/library/nginx").
func (c *Client) Tag(ctx context.Context, baseURL, repoKey, tag string) (digest.Digest, error) {
	if !validRepoKey(repoKey) || !tagRE.MatchString(tag) {
		return "", fmt.Errorf("tag lookup: invalid reference %q:%q", repoKey, tag)
	}
	segs := strings.Split(repoKey, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	ref := strings.Join(segs, "/") + ":" + tag
	req, err := c.request(ctx, http.MethodGet, baseURL, TagPath+ref)
	if err != nil {
		return "", err
	}
	resp, err := c.do(req, repoKey+":"+tag)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTagAnswer+1))
	if err != nil || len(body) > maxTagAnswer {
		return "", fmt.Errorf("tag %s:%s from %s: %w: read answer: %v", repoKey, tag, baseURL, ErrPeer, err)
	}
	if c.key != nil {
		got, err := base64.RawURLEncoding.DecodeString(resp.Header.Get(responseMACHeader))
		want, _ := base64.RawURLEncoding.DecodeString(responseMAC(c.key, req.Header.Get("Authorization"), body))
		if err != nil || !hmac.Equal(got, want) {
			return "", fmt.Errorf("tag %s:%s from %s: answer not signed with the fleet key: %w", repoKey, tag, baseURL, ErrUnauthorized)
		}
	}
	var a tagAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return "", fmt.Errorf("tag %s:%s from %s: %w: %w", repoKey, tag, baseURL, ErrPeer, err)
	}
	if err := blobstore.CheckDigest(a.Digest); err != nil {
		return "", fmt.Errorf("tag %s:%s from %s: %w: %w", repoKey, tag, baseURL, ErrPeer, err)
	}
	return a.Digest, nil
}

// unknownNode is the node ID of a client given none valid.
const unknownNode = "unknown"

// request builds a signed request for path under baseURL.
func (c *Client) request(ctx context.Context, method, baseURL, path string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(baseURL, "/")+path, nil)
	if err != nil {
		return nil, fmt.Errorf("data plane request to %q: %w", baseURL, err)
	}
	if c.nodeID != unknownNode {
		req.Header.Set(requesterHeader, c.nodeID)
	}
	if c.key != nil {
		// The transport writes req.URL.RequestURI() as the request target;
		// the server checks the MAC against exactly that.
		req.Header.Set("Authorization", authorization(c.key, c.nodeID, method, req.URL.RequestURI(), c.now()))
	}
	return req, nil
}

// do sends req and maps statuses to errors; on success (200, 206) the
// caller owns resp.Body.
func (c *Client) do(req *http.Request, what string) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, fmt.Errorf("%s from %s: %w", what, req.URL.Host, ctxErr)
		}
		return nil, fmt.Errorf("%s from %s: %w: %w", what, req.URL.Host, ErrPeer, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
		return resp, nil
	}
	drain(resp.Body)
	var sentinel error
	switch resp.StatusCode {
	case http.StatusNotFound:
		sentinel = ErrNotHeld
	case http.StatusUnauthorized:
		sentinel = ErrUnauthorized
	case http.StatusServiceUnavailable:
		sentinel = ErrBusy
		if resp.Header.Get(pieceSentHeader) != "" {
			sentinel = ErrPieceSent
		}
	default:
		sentinel = ErrPeer
	}
	return nil, fmt.Errorf("%s from %s: status %d: %w", what, req.URL.Host, resp.StatusCode, sentinel)
}

// drain reads a small error body so the connection can be reused.
func drain(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, 4096))
	rc.Close()
}

// peerBody wraps a response body: read errors (a cut connection, a short
// body) wrap ErrPeer.
type peerBody struct {
	rc   io.ReadCloser
	what string
}

func (b *peerBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%s: %w: %w", b.what, ErrPeer, err)
	}
	return n, err
}

func (b *peerBody) Close() error { return b.rc.Close() }
