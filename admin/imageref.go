package admin

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// ImageRef is an image reference as users type it:
// docker.io/library/nginx:1.27, nginx:1.27 (Docker Hub), host:5000/app@sha256:…
type ImageRef struct {
	Registry string // "" when the user named none
	Repo     string // path below the registry, as typed
	Tag      string // "latest" when neither tag nor digest was given
	Digest   digest.Digest
}

var (
	pathComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// dockerHub names the registry Docker Hub's short names mean.
const dockerHub = "docker.io"

// ParseImageRef parses s; the error says what is wrong with it.
func ParseImageRef(s string) (ImageRef, error) {
	var r ImageRef
	orig := s
	if s == "" {
		return r, fmt.Errorf("empty image reference")
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
	return r, nil
}

// String is the reference in its usual form.
func (r ImageRef) String() string {
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

// keys lists the store keys (registry/repository) that may hold r, most
// likely first. The node keeps an image under the registry it came from;
// a push without ?ns= lands under the default upstream's name, or under
// the bare repository when the node has no upstream.
func (r ImageRef) keys(defaultRegistry string) []string {
	var out []string
	add := func(k string) {
		for _, o := range out {
			if o == k {
				return
			}
		}
		out = append(out, k)
	}
	hubRepo := r.Repo
	if !strings.Contains(hubRepo, "/") {
		hubRepo = "library/" + hubRepo
	}
	switch r.Registry {
	case "":
		add(dockerHub + "/" + hubRepo)
	case dockerHub, "index.docker.io", "registry-1.docker.io":
		add(dockerHub + "/" + hubRepo)
		add(dockerHub + "/" + r.Repo)
	default:
		add(r.Registry + "/" + r.Repo)
	}
	if defaultRegistry != "" {
		add(defaultRegistry + "/" + r.Repo)
	}
	add(r.Repo)
	if r.Registry == "" {
		add(hubRepo)
	}
	return out
}
