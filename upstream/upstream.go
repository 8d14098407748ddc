// Package upstream is the client for origin registries (Docker Hub, a plant
// seed registry, a technician's laptop): token auth and docker config.json
// credentials through go-containerregistry's transport, ranges, and the
// mapping from a client's registry name (containerd's ?ns=) to a URL.
package upstream

import (
	"errors"

	"github.com/opencontainers/go-digest"
)

var (
	// ErrNotFound: the upstream answered 404 (or the OCI *_UNKNOWN codes).
	ErrNotFound = errors.New("not found upstream")
	// ErrUnavailable: the upstream could not be reached, timed out or
	// answered 5xx/429/401 after auth.
	ErrUnavailable = errors.New("upstream unavailable")
	// ErrDenied is wrapped with ErrUnavailable when the upstream answered
	// 401 or 403 after auth: no credentials or wrong ones, or (Docker Hub,
	// to anonymous clients) no such repository.
	ErrDenied = errors.New("upstream refused access")
	// ErrNoUpstream: ns names no configured upstream and upstreams are
	// restricted to the configured list (or none is configured).
	ErrNoUpstream = errors.New("no upstream for registry")
)

// Registry maps the registry name a client means to where it is fetched.
type Registry struct {
	Name string // "docker.io", "ghcr.io", "plant.local:5000"
	URL  string // "https://registry-1.docker.io", "http://127.0.0.1:5001"
}

// Manifest is a manifest as the upstream served it.
type Manifest struct {
	Digest    digest.Digest // from Docker-Content-Digest, else computed from Body
	MediaType string
	Size      int64
	Body      []byte // nil for HEAD
}
