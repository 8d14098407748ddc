package upstream

import (
	"context"
	_ "crypto/sha256" // registers digest algorithms for go-digest
	_ "crypto/sha512"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
)

const (
	// MaxManifestSize is the largest manifest the client reads (4 MiB).
	MaxManifestSize = 4 << 20
	maxTagPages     = 100
	maxTagsPage     = 4 << 20
)

// manifestAccept lists every manifest type a pull may meet.
var manifestAccept = strings.Join([]string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.docker.distribution.manifest.v2+json",
	"application/vnd.docker.distribution.manifest.v1+prettyjws",
	"application/vnd.docker.distribution.manifest.v1+json",
}, ", ")

var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

func checkRepo(repo string) error {
	if len(repo) > 255 || !repoRE.MatchString(repo) {
		return fmt.Errorf("invalid repository name %q", repo)
	}
	return nil
}

func checkDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("invalid digest %q: %w", d, err)
	}
	if a := d.Algorithm(); a != digest.SHA256 && a != digest.SHA512 {
		return fmt.Errorf("unsupported digest %q", d)
	}
	return nil
}

// Manifest fetches repo's manifest ref (a tag or a digest) from the
// upstream ns names. With head it sends HEAD (falling back to GET when the
// upstream does not say the digest) and returns no Body. A by-digest ref is
// verified against the body; a tag's body against Docker-Content-Digest.
func (c *Client) Manifest(ctx context.Context, ns, repo, ref string, head bool) (Manifest, error) {
	reg, err := c.Resolve(ns)
	if err != nil {
		return Manifest{}, err
	}
	sep := ":"
	var want digest.Digest
	if strings.Contains(ref, ":") {
		sep, want = "@", digest.Digest(ref)
		if err := checkDigest(want); err != nil {
			return Manifest{}, err
		}
	} else if !tagRE.MatchString(ref) {
		return Manifest{}, fmt.Errorf("invalid tag %q", ref)
	}
	if err := checkRepo(repo); err != nil {
		return Manifest{}, err
	}
	what := "manifest " + reg.Name + "/" + repo + sep + ref
	hdr := http.Header{"Accept": {manifestAccept}}
	u := reg.URL + "/v2/" + repo + "/manifests/" + ref
	if head {
		resp, err := c.do(ctx, reg, repo, http.MethodHead, u, hdr, what)
		if err != nil {
			return Manifest{}, err
		}
		m, ok, err := headManifest(resp, want, what)
		if err != nil || ok {
			return m, err
		}
	}
	resp, err := c.do(ctx, reg, repo, http.MethodGet, u, hdr, what)
	if err != nil {
		return Manifest{}, err
	}
	m, err := readManifest(resp, want, what)
	if head {
		m.Body = nil
	}
	return m, err
}

// headManifest reads a HEAD answer; ok is false when GET must tell more.
func headManifest(resp *http.Response, want digest.Digest, what string) (m Manifest, ok bool, err error) {
	if resp.StatusCode == http.StatusMethodNotAllowed {
		drain(resp)
		return Manifest{}, false, nil
	}
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, false, statusError(resp, what)
	}
	drain(resp)
	dcd := resp.Header.Get("Docker-Content-Digest")
	if dcd == "" || resp.ContentLength < 0 {
		return Manifest{}, false, nil
	}
	d := digest.Digest(dcd)
	if err := checkDigest(d); err != nil {
		return Manifest{}, false, fmt.Errorf("%s: Docker-Content-Digest: %w: %w", what, ErrUnavailable, err)
	}
	if want != "" && d != want {
		return Manifest{}, false, fmt.Errorf("%s: upstream lied: Docker-Content-Digest is %s: %w", what, d, ErrUnavailable)
	}
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, false, fmt.Errorf("%s: %d bytes, over the %d limit: %w", what, resp.ContentLength, MaxManifestSize, ErrUnavailable)
	}
	return Manifest{Digest: d, MediaType: mediaType(resp, nil), Size: resp.ContentLength}, true, nil
}

// readManifest reads and verifies a GET answer.
func readManifest(resp *http.Response, want digest.Digest, what string) (Manifest, error) {
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, statusError(resp, what)
	}
	defer drain(resp)
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, fmt.Errorf("%s: %d bytes, over the %d limit: %w", what, resp.ContentLength, MaxManifestSize, ErrUnavailable)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return Manifest{}, fmt.Errorf("%s: reading body: %w: %w", what, ErrUnavailable, err)
	}
	if len(body) > MaxManifestSize {
		return Manifest{}, fmt.Errorf("%s: over the %d byte limit: %w", what, MaxManifestSize, ErrUnavailable)
	}
	d := want
	if d == "" {
		d = digest.Digest(resp.Header.Get("Docker-Content-Digest"))
		if d == "" {
			d = digest.SHA256.FromBytes(body)
		} else if err := checkDigest(d); err != nil {
			return Manifest{}, fmt.Errorf("%s: Docker-Content-Digest: %w: %w", what, ErrUnavailable, err)
		}
	}
	if got := d.Algorithm().FromBytes(body); got != d {
		return Manifest{}, fmt.Errorf("%s: upstream lied: body hashes to %s, not %s: %w", what, got, d, ErrUnavailable)
	}
	return Manifest{Digest: d, MediaType: mediaType(resp, body), Size: int64(len(body)), Body: body}, nil
}

// mediaType is Content-Type without parameters, else the body's mediaType.
func mediaType(resp *http.Response, body []byte) string {
	mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if mt != "" && mt != "application/octet-stream" && mt != "text/plain" {
		return mt
	}
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) == nil && probe.MediaType != "" {
		return probe.MediaType
	}
	return mt
}

// Blob streams blob d of repo from offset on. The int64 is the blob's total
// size (-1 when the upstream does not say). When the upstream ignores the
// Range header the first offset bytes are skipped here. Bytes are not
// verified: the caller hashes what it stores.
func (c *Client) Blob(ctx context.Context, ns, repo string, d digest.Digest, offset int64) (io.ReadCloser, int64, error) {
	reg, what, err := c.blobTarget(ns, repo, d)
	if err != nil {
		return nil, 0, err
	}
	if offset < 0 {
		return nil, 0, fmt.Errorf("%s: negative offset %d", what, offset)
	}
	hdr := http.Header{}
	if offset > 0 {
		hdr.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	u := reg.URL + "/v2/" + repo + "/blobs/" + d.String()
	resp, err := c.do(ctx, reg, repo, http.MethodGet, u, hdr, what)
	if err == nil && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && offset > 0 {
		// Some registries (ggcr's) only parse closed ranges: read from the
		// start and skip instead.
		drain(resp)
		resp, err = c.do(ctx, reg, repo, http.MethodGet, u, nil, what)
	}
	if err != nil {
		return nil, 0, err
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		start, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err == nil && start != offset {
			err = fmt.Errorf("range starts at %d, asked %d", start, offset)
		}
		if err != nil {
			drain(resp)
			return nil, 0, fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
		}
		if total < 0 && resp.ContentLength >= 0 {
			total = offset + resp.ContentLength
		}
		return resp.Body, total, nil
	case resp.StatusCode == http.StatusOK:
		total := resp.ContentLength
		if offset > 0 {
			if total >= 0 && offset > total {
				drain(resp)
				return nil, 0, fmt.Errorf("%s: offset %d past size %d: %w", what, offset, total, ErrUnavailable)
			}
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				_ = resp.Body.Close()
				return nil, 0, fmt.Errorf("%s: skipping %d bytes: %w: %w", what, offset, ErrUnavailable, err)
			}
		}
		return resp.Body, total, nil
	}
	return nil, 0, statusError(resp, what)
}

// parseContentRange parses "bytes START-END/TOTAL" (TOTAL may be "*": -1).
func parseContentRange(s string) (start, total int64, err error) {
	rest, ok := strings.CutPrefix(s, "bytes ")
	span, size, ok2 := strings.Cut(rest, "/")
	first, _, ok3 := strings.Cut(span, "-")
	if !ok || !ok2 || !ok3 {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	if start, err = strconv.ParseInt(first, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	if size == "*" {
		return start, -1, nil
	}
	if total, err = strconv.ParseInt(size, 10, 64); err != nil || total < start {
		return 0, 0, fmt.Errorf("bad Content-Range %q", s)
	}
	return start, total, nil
}

// StatBlob returns the size of blob d of repo (HEAD).
func (c *Client) StatBlob(ctx context.Context, ns, repo string, d digest.Digest) (int64, error) {
	reg, what, err := c.blobTarget(ns, repo, d)
	if err != nil {
		return 0, err
	}
	resp, err := c.do(ctx, reg, repo, http.MethodHead, reg.URL+"/v2/"+repo+"/blobs/"+d.String(), nil, what)
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, statusError(resp, what)
	}
	drain(resp)
	if dcd := resp.Header.Get("Docker-Content-Digest"); dcd != "" && dcd != d.String() {
		return 0, fmt.Errorf("%s: upstream lied: Docker-Content-Digest is %s: %w", what, dcd, ErrUnavailable)
	}
	if resp.ContentLength < 0 {
		return 0, fmt.Errorf("%s: no Content-Length: %w", what, ErrUnavailable)
	}
	return resp.ContentLength, nil
}

func (c *Client) blobTarget(ns, repo string, d digest.Digest) (Registry, string, error) {
	reg, err := c.Resolve(ns)
	if err != nil {
		return Registry{}, "", err
	}
	if err := checkRepo(repo); err != nil {
		return Registry{}, "", err
	}
	if err := checkDigest(d); err != nil {
		return Registry{}, "", err
	}
	return reg, "blob " + reg.Name + "/" + repo + "@" + d.String(), nil
}

// Tags lists repo's tags, following Link pagination (at most 100 pages,
// all on the upstream's own host).
func (c *Client) Tags(ctx context.Context, ns, repo string) ([]string, error) {
	reg, err := c.Resolve(ns)
	if err != nil {
		return nil, err
	}
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	what := "tags " + reg.Name + "/" + repo
	base, _ := url.Parse(reg.URL)
	next := reg.URL + "/v2/" + repo + "/tags/list"
	var tags []string
	for range maxTagPages {
		resp, err := c.do(ctx, reg, repo, http.MethodGet, next, nil, what)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, statusError(resp, what)
		}
		var page struct {
			Tags []string `json:"tags"`
		}
		err = json.NewDecoder(io.LimitReader(resp.Body, maxTagsPage)).Decode(&page)
		link := nextLink(resp)
		drain(resp)
		if err != nil {
			return nil, fmt.Errorf("%s: decoding: %w: %w", what, ErrUnavailable, err)
		}
		tags = append(tags, page.Tags...)
		if link == nil {
			return tags, nil
		}
		if link.Scheme != base.Scheme || link.Host != base.Host {
			return nil, fmt.Errorf("%s: next page %s is on another host: %w", what, link, ErrUnavailable)
		}
		next = link.String()
	}
	return nil, fmt.Errorf("%s: more than %d pages: %w", what, maxTagPages, ErrUnavailable)
}

// nextLink returns the rel="next" target of the response's Link headers,
// resolved against the request URL.
func nextLink(resp *http.Response) *url.URL {
	for _, v := range resp.Header.Values("Link") {
		for part := range strings.SplitSeq(v, ",") {
			target, params, ok := strings.Cut(part, ";")
			target = strings.TrimSpace(target)
			if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
				continue
			}
			rel := strings.ReplaceAll(strings.ReplaceAll(params, " ", ""), `"`, "")
			if !strings.Contains(rel, "rel=next") {
				continue
			}
			u, err := resp.Request.URL.Parse(strings.Trim(target, "<>"))
			if err == nil {
				return u
			}
		}
	}
	return nil
}
