// Package archive moves images between files and a node, for air-gapped
// lines: Import loads an OCI image layout (a folder), an oci-archive (that
// layout in a tar) or a `docker save` tar into a node over its registry API,
// verifying every digest; Export reads images from a node and writes an
// oci-archive that keeps every digest (the manifests' bytes are copied, never
// re-encoded).
//
// An image name lands where a containerd mirror pull of it looks: the name
// docker.io/library/nginx:1.27 is pushed to /v2/library/nginx/... with
// ?ns=docker.io, so the node stores it under its "docker.io/library/nginx"
// repository.
package archive

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DefaultNode is the registry API of the local node.
const DefaultNode = "http://127.0.0.1:5000"

// Annotations that name an image in an OCI layout's index.json.
const (
	// AnnotationRefName is the OCI name: a tag ("1.27") or a full name.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationImageName is containerd's full image name
	// ("docker.io/library/nginx:1.27"); it wins over the OCI one.
	AnnotationImageName = "io.containerd.image.name"
)

// Errors callers can tell apart with errors.Is.
var (
	// ErrBadReference: an image name that does not parse.
	ErrBadReference = errors.New("invalid image reference")
	// ErrNoName: the archive does not say what an image is called.
	ErrNoName = errors.New("image has no name")
	// ErrFormat: the path is no archive this package reads.
	ErrFormat = errors.New("not an OCI layout, oci-archive or docker save archive")
	// ErrMissing: content the images need is not there.
	ErrMissing = errors.New("content missing")
	// ErrDigest: bytes that do not match the digest they are named by.
	ErrDigest = errors.New("content does not match its digest")
	// ErrUnsupported: a manifest kind this package cannot move.
	ErrUnsupported = errors.New("unsupported content")
)

// dockerHub is how containerd names Docker Hub (its ?ns= value); the
// go-containerregistry name package calls it index.docker.io.
const dockerHub = "docker.io"

// target is where an image name lands on a node.
type target struct {
	name   string // normalized: docker.io/library/nginx:1.27 or ...@sha256:...
	ns     string // the registry the name names: the node's ?ns= value
	repo   string // the repository under it: library/nginx
	tag    string // "" for a digest reference
	digest string // "" for a tag reference
}

// tagOnly matches a bare tag ("1.27", "v1"): an OCI ref.name without a
// repository.
var tagOnly = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// parseRef parses a full image name as containerd would: a name without a
// registry is Docker Hub's, without a tag it is :latest.
func parseRef(s string) (target, error) {
	r, err := name.ParseReference(s)
	if err != nil {
		return target{}, fmt.Errorf("%q: %w: %v", s, ErrBadReference, err)
	}
	t := target{ns: r.Context().RegistryStr(), repo: r.Context().RepositoryStr()}
	if t.ns == name.DefaultRegistry {
		t.ns = dockerHub
	}
	switch r := r.(type) {
	case name.Tag:
		t.tag = r.TagStr()
		t.name = t.ns + "/" + t.repo + ":" + t.tag
	case name.Digest:
		t.digest = r.DigestStr()
		t.name = t.ns + "/" + t.repo + "@" + t.digest
	}
	return t, nil
}

// parseRepo parses a repository name without tag or digest; ok is false when
// s is something else.
func parseRepo(s string) (target, bool) {
	if _, err := name.NewTag(s, name.StrictValidation); err == nil {
		return target{}, false
	}
	if _, err := name.NewDigest(s); err == nil {
		return target{}, false
	}
	r, err := name.NewRepository(s)
	if err != nil {
		return target{}, false
	}
	t := target{ns: r.RegistryStr(), repo: r.RepositoryStr()}
	if t.ns == name.DefaultRegistry {
		t.ns = dockerHub
	}
	return t, true
}

// withTag is the repository of t with tag (a digest reference to d when tag
// is empty).
func (t target) withTag(tag string, d v1.Hash) target {
	out := target{ns: t.ns, repo: t.repo}
	if tag == "" {
		out.digest = d.String()
		out.name = t.ns + "/" + t.repo + "@" + out.digest
	} else {
		out.tag = tag
		out.name = t.ns + "/" + t.repo + ":" + tag
	}
	return out
}

// refName is the OCI ref.name annotation for t, as containerd and Docker
// write it: the tag alone, or the full name of a digest reference.
func (t target) refName() string {
	if t.tag != "" {
		return t.tag
	}
	return t.name
}

// namesOf lists what an index.json entry's annotations call it: containerd's
// full name if present, else the OCI ref.name (maybe just a tag).
func namesOf(ann map[string]string) []string {
	if n := strings.TrimSpace(ann[AnnotationImageName]); n != "" {
		return []string{n}
	}
	if n := strings.TrimSpace(ann[AnnotationRefName]); n != "" {
		return []string{n}
	}
	return nil
}

// targets decides where each root lands: the names the archive gives it, or
// override (--name). override may be a full reference (exactly one image in
// the archive), or a repository: each image keeps the tags the archive gives
// it under that repository (digest only if it has none).
func targets(roots []root, override string) ([][]target, error) {
	out := make([][]target, len(roots))
	if override == "" {
		for i, r := range roots {
			if len(r.names) == 0 {
				return nil, fmt.Errorf("image %s: %w in the archive; give --name REF", r.desc.Digest, ErrNoName)
			}
			for _, n := range r.names {
				if tagOnly.MatchString(n) {
					return nil, fmt.Errorf("image %s is named only %q (a tag): %w; give --name REPOSITORY or --name REF", r.desc.Digest, n, ErrNoName)
				}
				t, err := parseRef(n)
				if err != nil {
					return nil, fmt.Errorf("image %s: name in the archive: %w", r.desc.Digest, err)
				}
				if t.digest != "" && t.digest != r.desc.Digest.String() {
					return nil, fmt.Errorf("image %s is named %s: %w", r.desc.Digest, n, ErrBadReference)
				}
				out[i] = append(out[i], t)
			}
		}
		return out, nil
	}
	if repo, ok := parseRepo(override); ok {
		for i, r := range roots {
			for _, tag := range tagsOf(r.names) {
				out[i] = append(out[i], repo.withTag(tag, r.desc.Digest))
			}
			if len(out[i]) == 0 {
				out[i] = append(out[i], repo.withTag("", r.desc.Digest))
			}
		}
		return out, nil
	}
	t, err := parseRef(override)
	if err != nil {
		return nil, fmt.Errorf("--name: %w", err)
	}
	if len(roots) != 1 {
		return nil, fmt.Errorf("--name %s names one image, the archive holds %d: give a repository without a tag instead", override, len(roots))
	}
	if t.digest != "" && t.digest != roots[0].desc.Digest.String() {
		return nil, fmt.Errorf("--name %s: the archive's image is %s: %w", override, roots[0].desc.Digest, ErrBadReference)
	}
	out[0] = []target{t}
	return out, nil
}

// tagsOf returns the tags in names: bare tags as they are, the tag of each
// full tag reference.
func tagsOf(names []string) []string {
	var tags []string
	for _, n := range names {
		if tagOnly.MatchString(n) {
			tags = append(tags, n)
			continue
		}
		if t, err := parseRef(n); err == nil && t.tag != "" {
			tags = append(tags, t.tag)
		}
	}
	return tags
}

// unique drops a name tgts gives one image twice, and refuses a name two
// different images would get: the node keeps a tag for the image pushed
// last, so the other would be lost without a word. src is the archive
// and override --name, for the message.
func unique(tgts [][]target, roots []root, src, override string) error {
	first := map[string]v1.Hash{} // name -> the image it names
	for i, ts := range tgts {
		kept := ts[:0]
		for _, t := range ts {
			d, seen := first[t.name]
			switch {
			case !seen:
				first[t.name] = roots[i].desc.Digest
				kept = append(kept, t)
			case d != roots[i].desc.Digest && override == "":
				return fmt.Errorf("two images in %s are both named %s (%s and %s); nothing imported: put each in an archive of its own",
					src, t.name, d, roots[i].desc.Digest)
			case d != roots[i].desc.Digest:
				return fmt.Errorf("two images in %s would both be named %s (%s and %s): --name %s keeps each image's tag; nothing imported: import without --name, or each image from an archive of its own",
					src, t.name, d, roots[i].desc.Digest, override)
			}
		}
		tgts[i] = kept
	}
	return nil
}
