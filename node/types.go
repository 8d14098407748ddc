// Package node is the fetch policy: local store, then elsewhere (upstream;
// peers later), with tag resolution, one shared fetch per missing blob and
// streaming to every reader from the first byte.
package node

import (
	"errors"
	"io"

	"github.com/opencontainers/go-digest"
)

// ErrUpstream wraps failures of the upstream registry (unreachable, 5xx,
// lying about content) so the API can answer 502/503 instead of 404.
var ErrUpstream = errors.New("upstream failed")

// Name says which repository a request is about and which registry the
// client means (containerd's ?ns= query parameter; empty when absent).
type Name struct {
	NS   string // e.g. "docker.io"; "" = the node's default upstream
	Repo string // e.g. "library/nginx"
}

// Manifest is a manifest ready to serve.
type Manifest struct {
	Digest    digest.Digest
	MediaType string
	Size      int64
	Body      []byte // may be nil for HEAD
}

// Content is a blob ready to serve. Reads may block while the blob is still
// arriving; a read error means the bytes could not be verified and the
// response must be cut short. The final byte is released only after the whole
// blob verified, so a client never receives a complete wrong blob.
type Content struct {
	Digest digest.Digest
	Size   int64
	Source string            // "local", "peer" or "upstream" (metrics label)
	Body   io.ReadSeekCloser // nil for HEAD; an *os.File for local hits
	// Arriving: Body follows a download still in progress, verified only
	// as a whole; its last byte waits for the digest.
	Arriving bool
}
