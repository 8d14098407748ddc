package prefetch

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// Ref is an image reference as a user writes it: [registry/]repo[:tag][@digest].
type Ref struct {
	Registry string // "" = the node's default registry
	Repo     string
	Tag      string // "latest" when neither tag nor digest is given
	Digest   digest.Digest
}

var (
	repoRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)
	tagRE  = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// maxRefLen bounds a reference (registry, repository, tag and digest).
const maxRefLen = 512

// ParseRef parses an image reference. The first path component is a
// registry when it has a dot or a port or is "localhost"
// (127.0.0.1:5000/app, plant.local/app, docker.io/library/nginx);
// otherwise the reference names the node's default registry.
func ParseRef(s string) (Ref, error) {
	if s == "" || len(s) > maxRefLen || strings.TrimSpace(s) != s {
		return Ref{}, fmt.Errorf("reference %q: empty, too long or padded", s)
	}
	var r Ref
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		r.Digest = digest.Digest(rest[i+1:])
		if err := blobstore.CheckDigest(r.Digest); err != nil {
			return Ref{}, fmt.Errorf("reference %q: %w", s, err)
		}
		rest = rest[:i]
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		if first := rest[:i]; strings.ContainsAny(first, ".:") || first == "localhost" {
			r.Registry, rest = first, rest[i+1:]
		}
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i:], "/") {
		r.Tag, rest = rest[i+1:], rest[:i]
		if !tagRE.MatchString(r.Tag) {
			return Ref{}, fmt.Errorf("reference %q: bad tag %q", s, r.Tag)
		}
	}
	if !repoRE.MatchString(rest) {
		return Ref{}, fmt.Errorf("reference %q: bad repository %q", s, rest)
	}
	r.Repo = rest
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	switch r.Registry {
	case "index.docker.io", "registry-1.docker.io":
		r.Registry = "docker.io"
	}
	return r, nil
}

// String is the reference in its canonical form.
func (r Ref) String() string {
	s := r.Repo
	if r.Registry != "" {
		s = r.Registry + "/" + s
	}
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// target is what the node pulls for r: the repository in the registry
// (Docker Hub's one-component names live under library/, as docker says),
// and the digest when given, else the tag. defaultRegistry is the
// registry a reference without one means.
func (r Ref) target(defaultRegistry string) (node.Name, string) {
	repo := r.Repo
	reg := r.Registry
	if reg == "" {
		reg = defaultRegistry
	}
	if reg == "docker.io" && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	ref := r.Tag
	if r.Digest != "" {
		ref = r.Digest.String()
	}
	return node.Name{NS: r.Registry, Repo: repo}, ref
}
