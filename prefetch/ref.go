package prefetch

import (
	"github.com/imgmesh/imgmesh/internal/imageref"
	"github.com/imgmesh/imgmesh/node"
)

// Ref is an image reference as a user writes it: [registry/]repo[:tag][@digest].
type Ref = imageref.Ref

// ParseRef parses an image reference (see imageref.Parse).
func ParseRef(s string) (Ref, error) { return imageref.Parse(s) }

// target is what the node pulls for r: the repository in the registry
// (Docker Hub's one-component names live under library/, as docker says),
// and the digest when given, else the tag. defaultRegistry is the
// registry a reference without one means.
func target(r Ref, defaultRegistry string) (node.Name, string) {
	repo := r.Repo
	reg := r.Registry
	if reg == "" {
		reg = defaultRegistry
	}
	if reg == imageref.DockerHub {
		repo = r.HubRepo()
	}
	ref := r.Tag
	if r.Digest != "" {
		ref = r.Digest.String()
	}
	return node.Name{NS: r.Registry, Repo: repo}, ref
}
