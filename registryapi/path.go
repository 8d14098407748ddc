package registryapi

import (
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// routeKind says what a /v2 path names.
type routeKind int

const (
	routeNone        routeKind = iota // not an API endpoint
	routePing                         // /v2/
	routeManifest                     // /v2/<name>/manifests/<reference>
	routeBlob                         // /v2/<name>/blobs/<digest>
	routeUploadStart                  // /v2/<name>/blobs/uploads/
	routeUpload                       // /v2/<name>/blobs/uploads/<id>
	routeTags                         // /v2/<name>/tags/list
	routeReferrers                    // /v2/<name>/referrers/<digest>
)

var routeNames = [...]string{"unknown", "ping", "manifest", "blob", "upload_start", "upload", "tags", "referrers"}

func (k routeKind) String() string { return routeNames[k] }

// route is a /v2 path parsed once: what it names and its parts, unvalidated
// except for the repository name.
type route struct {
	kind routeKind
	name string // repository name
	ref  string // manifest reference, blob or subject digest, or upload id
}

// maxNameLen bounds a repository name (distribution-spec: 255 characters
// including a registry host a client may prepend).
const maxNameLen = 255

var (
	nameRe = regexp.MustCompile(`^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRe  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// notRoute is the error for paths that are no API endpoint.
func notRoute() *Error {
	return apiError(CodeUnsupported, "no such endpoint").withStatus(404)
}

// parsePath parses the path of a request under /v2/. It fails with
// NAME_INVALID when the path has an endpoint shape but a bad name, and with a
// 404 UNSUPPORTED when it names no endpoint.
func parsePath(p string) (route, *Error) {
	if p == "/v2" {
		return route{kind: routePing}, nil
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return route{}, notRoute()
	}
	if rest == "" {
		return route{kind: routePing}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var rt route
	var nameSegs int
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		rt, nameSegs = route{kind: routeTags}, n-2
	case n >= 3 && segs[n-2] == "manifests":
		rt, nameSegs = route{kind: routeManifest, ref: segs[n-1]}, n-2
	case n >= 3 && segs[n-2] == "referrers":
		rt, nameSegs = route{kind: routeReferrers, ref: segs[n-1]}, n-2
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads" && segs[n-1] == "":
		rt, nameSegs = route{kind: routeUploadStart}, n-3
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		rt, nameSegs = route{kind: routeUploadStart}, n-2
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		rt, nameSegs = route{kind: routeUpload, ref: segs[n-1]}, n-3
	case n >= 3 && segs[n-2] == "blobs":
		rt, nameSegs = route{kind: routeBlob, ref: segs[n-1]}, n-2
	default:
		return route{}, notRoute()
	}
	if rt.kind != routeTags && rt.kind != routeUploadStart && rt.ref == "" {
		return route{}, notRoute()
	}
	rt.name = strings.Join(segs[:nameSegs], "/")
	if err := checkName(rt.name); err != nil {
		return route{}, err
	}
	return rt, nil
}

// checkName validates a repository name against the distribution-spec.
func checkName(name string) *Error {
	if len(name) > maxNameLen {
		return apiError(CodeNameInvalid, "repository name longer than 255 characters")
	}
	if !nameRe.MatchString(name) {
		return apiError(CodeNameInvalid, map[string]string{"name": name})
	}
	return nil
}

// reference is a parsed manifest reference: a tag or a digest.
type reference struct {
	tag    string
	digest digest.Digest
}

func (r reference) String() string {
	if r.tag != "" {
		return r.tag
	}
	return r.digest.String()
}

// parseReference parses a manifest reference. Anything with a colon is a
// digest (tags cannot contain one) and must be a supported, well-formed one.
func parseReference(s string) (reference, *Error) {
	if strings.Contains(s, ":") {
		d, err := parseDigest(s)
		if err != nil {
			return reference{}, err
		}
		return reference{digest: d}, nil
	}
	if !tagRe.MatchString(s) {
		return reference{}, apiError(CodeManifestInvalid, map[string]string{"tag": s, "reason": "invalid tag"})
	}
	return reference{tag: s}, nil
}

// parseDigest validates a digest: sha256 or sha512, well formed.
func parseDigest(s string) (digest.Digest, *Error) {
	d := digest.Digest(s)
	if err := blobstore.CheckDigest(d); err != nil {
		return "", apiError(CodeDigestInvalid, map[string]string{"digest": s, "reason": err.Error()}).wrap(err)
	}
	return d, nil
}
