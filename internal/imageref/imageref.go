// Package imageref parses image references as users type them:
// docker.io/library/nginx:1.27, nginx:1.27 (Docker Hub), host:5000/app@sha256:…
package imageref

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Ref is a parsed image reference.
type Ref struct {
	Registry string // "" when the user named none
	Repo     string // path below the registry, as typed
	Tag      string // "latest" when neither tag nor digest was given
	Digest   digest.Digest
}

// DockerHub is the registry Docker Hub's names and aliases mean.
const DockerHub = "docker.io"

// maxLen bounds a reference (registry, repository, tag and digest).
const maxLen = 512

var (
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// Parse parses s; the error says what is wrong with it. The first path
// component is a registry when it has a dot or a port or is "localhost";
// Docker Hub's aliases (index.docker.io, registry-1.docker.io) become
// docker.io.
func Parse(s string) (Ref, error) {
	var r Ref
	orig := s
	switch {
	case s == "":
		return r, fmt.Errorf("empty image reference")
	case len(s) > maxLen || strings.TrimSpace(s) != s:
		return r, fmt.Errorf("image %q: too long or padded with spaces", orig)
	}
	if name, d, ok := strings.Cut(s, "@"); ok {
		if err := blobstore.CheckDigest(digest.Digest(d)); err != nil {
			return r, fmt.Errorf("image %q: bad digest: %v", orig, err)
		}
		r.Digest, s = digest.Digest(d), name
	}
	if i := strings.LastIndexByte(s, ':'); i > strings.LastIndexByte(s, '/') {
		r.Tag, s = s[i+1:], s[:i]
		if !tagPattern.MatchString(r.Tag) {
			return r, fmt.Errorf("image %q: bad tag %q", orig, r.Tag)
		}
	}
	if first, rest, ok := strings.Cut(s, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		r.Registry, s = first, rest
	}
	if s == "" {
		return r, fmt.Errorf("image %q: no repository", orig)
	}
	for _, c := range strings.Split(s, "/") {
		if !pathComponent.MatchString(c) {
			return r, fmt.Errorf("image %q: bad repository name %q (lowercase letters, digits, and . _ - between them)", orig, s)
		}
	}
	r.Repo = s
	if r.Tag == "" && r.Digest == "" {
		r.Tag = "latest"
	}
	switch r.Registry {
	case "index.docker.io", "registry-1.docker.io":
		r.Registry = DockerHub
	}
	return r, nil
}

// String is the reference in its usual form.
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

// HubRepo is the repository as Docker Hub stores it: one-component names
// live under library/.
func (r Ref) HubRepo() string {
	if strings.Contains(r.Repo, "/") {
		return r.Repo
	}
	return "library/" + r.Repo
}
