package admin

import (
	"github.com/imgmesh/imgmesh/internal/imageref"
)

// ImageRef is an image reference as users type it (see imageref).
type ImageRef = imageref.Ref

// ParseImageRef parses s; the error says what is wrong with it.
func ParseImageRef(s string) (ImageRef, error) { return imageref.Parse(s) }

// keys lists the store keys (registry/repository) that may hold r, most
// likely first. The node keeps an image under the registry it came from;
// a push without ?ns= lands under the default upstream's name, or under
// the bare repository when the node has no upstream.
func keys(r ImageRef, defaultRegistry string) []string {
	var out []string
	add := func(k string) {
		for _, o := range out {
			if o == k {
				return
			}
		}
		out = append(out, k)
	}
	hubRepo := r.HubRepo()
	switch r.Registry {
	case "":
		add(imageref.DockerHub + "/" + hubRepo)
	case imageref.DockerHub, "index.docker.io", "registry-1.docker.io":
		add(imageref.DockerHub + "/" + hubRepo)
		add(imageref.DockerHub + "/" + r.Repo)
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
