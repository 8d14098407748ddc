// Package blobstore keeps content-addressed blobs as files and an index
// (repository links, manifests, tags, referrers) in badger.
//
// A blob becomes visible under its digest only after its size and digest
// were verified: writers fill a temp file, hash while writing, fsync and
// rename on Commit.
package blobstore

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var (
	// ErrNotFound: no such blob, manifest, tag or link.
	ErrNotFound = errors.New("not found")
	// ErrDigestMismatch: written bytes do not hash to the expected digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: written byte count differs from the expected size.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrUnsupportedDigest: the digest algorithm is neither sha256 nor sha512.
	ErrUnsupportedDigest = errors.New("unsupported digest algorithm")
	// ErrClosed: the writer was already committed or cancelled.
	ErrClosed = errors.New("writer closed")
)

// Info describes a verified blob in the store.
type Info struct {
	Digest digest.Digest
	Size   int64
}

// Blob is an open, verified blob. The real store returns an *os.File so that
// http.ServeContent can use sendfile.
type Blob interface {
	io.ReadSeekCloser
	io.ReaderAt
}

// Writer ingests one blob. Bytes written are readable with ReadAt while the
// write is in progress (followers of an in-flight download read from it);
// ReadAt at or past Size returns io.EOF, and after Commit or Cancel it
// returns ErrClosed (read the committed blob with Store.Open).
// Nothing is visible under a digest until Commit verified it.
type Writer interface {
	io.Writer
	io.ReaderAt
	// Size is the number of bytes written so far.
	Size() int64
	// Sum is the sha256 digest of the bytes written so far: a caller can
	// tell a download verified before Commit's fsync and rename.
	Sum() digest.Digest
	// Commit verifies the bytes against size (-1: any) and expected, makes the
	// blob visible under expected and releases the writer. A mismatch returns
	// an error wrapping ErrSizeMismatch or ErrDigestMismatch and discards the
	// data. expected may be sha256 or sha512.
	Commit(ctx context.Context, size int64, expected digest.Digest) (Info, error)
	// Cancel discards the data. Safe to call after Commit (no-op).
	Cancel() error
}

// Manifest is the index record kept for a manifest blob.
type Manifest struct {
	Digest       digest.Digest
	MediaType    string
	Size         int64
	ArtifactType string            // artifactType, or config.mediaType for the referrers API
	Subject      digest.Digest     // subject.digest, empty if none
	Annotations  map[string]string // top-level annotations
}

// Store is the node's local content: blobs plus the index.
type Store interface {
	// Stat reports a committed blob, or ErrNotFound.
	Stat(ctx context.Context, d digest.Digest) (Info, error)
	// Open opens a committed blob for reading, or ErrNotFound.
	Open(ctx context.Context, d digest.Digest) (Blob, error)
	// NewWriter starts an ingest. The caller must Commit or Cancel it.
	NewWriter(ctx context.Context) (Writer, error)
	// Delete removes a blob file and its links, manifest record and tags
	// pointing at it. ErrNotFound if absent.
	Delete(ctx context.Context, d digest.Digest) error
	// Walk calls fn for every committed blob until fn returns an error.
	Walk(ctx context.Context, fn func(Info) error) error

	// Link records that repo references blob d (pushed, mounted or cached).
	Link(ctx context.Context, repo string, d digest.Digest) error
	// Linked reports whether repo references d.
	Linked(ctx context.Context, repo string, d digest.Digest) (bool, error)
	// Unlink removes the link; the blob file is deleted when no link remains.
	// ErrNotFound if the link does not exist.
	Unlink(ctx context.Context, repo string, d digest.Digest) error

	// PutManifest indexes a committed blob as a manifest of repo (also links it).
	PutManifest(ctx context.Context, repo string, m Manifest) error
	// GetManifest returns the manifest record of d in repo, or ErrNotFound.
	GetManifest(ctx context.Context, repo string, d digest.Digest) (Manifest, error)
	// Referrers lists manifests of repo whose subject is d, as OCI descriptors
	// (mediaType, digest, size, artifactType, annotations), in digest order;
	// an empty, non-nil list if none.
	Referrers(ctx context.Context, repo string, subject digest.Digest) ([]ocispec.Descriptor, error)

	// Tag points repo:tag at manifest d, remembering when.
	Tag(ctx context.Context, repo, tag string, d digest.Digest) error
	// Resolve returns the manifest digest of repo:tag, or ErrNotFound.
	Resolve(ctx context.Context, repo, tag string) (digest.Digest, error)
	// Tags lists the tags of repo in lexical order (empty, no error, if none).
	Tags(ctx context.Context, repo string) ([]string, error)
	// Untag removes repo:tag, or ErrNotFound.
	Untag(ctx context.Context, repo, tag string) error
	// UntagIf removes repo:tag if it points at manifest d, in one step;
	// ErrNotFound if it is absent or points elsewhere (re-pushed meanwhile).
	UntagIf(ctx context.Context, repo, tag string, d digest.Digest) error
	// WalkTags calls fn for every tag of every repository until fn returns
	// an error.
	WalkTags(ctx context.Context, fn func(repo, tag string, d digest.Digest) error) error

	// WalkManifests calls fn for every manifest record of every repository
	// until fn returns an error.
	WalkManifests(ctx context.Context, fn func(repo string, m Manifest) error) error

	// Pin keeps manifest (or index) d and everything it names from eviction.
	// ErrNotFound unless d is indexed as a manifest in some repository.
	// Deleting the manifest blob removes its pin.
	Pin(ctx context.Context, d digest.Digest) error
	// Unpin removes d's pin, or ErrNotFound if d is not pinned.
	Unpin(ctx context.Context, d digest.Digest) error
	// Pins lists the pinned digests in digest order (empty, no error, if none).
	Pins(ctx context.Context) ([]digest.Digest, error)

	// Touch records that blob d was used now (served to a client). It is
	// cheap: kept in memory and persisted in batches. Commit counts as a use;
	// Open does not (the store's own readers, e.g. eviction, must not
	// refresh what they read).
	Touch(ctx context.Context, d digest.Digest)
	// LastAccess reports when blob d was last committed or touched, or
	// ErrNotFound.
	LastAccess(ctx context.Context, d digest.Digest) (time.Time, error)
	// WalkAccess calls fn for every committed blob with its last access,
	// until fn returns an error.
	WalkAccess(ctx context.Context, fn func(Info, time.Time) error) error

	// Usage reports bytes and blob count of committed content.
	Usage(ctx context.Context) (bytes int64, blobs int64, err error)
	// Writable checks that the store can write (for /readyz).
	Writable(ctx context.Context) error

	Close() error
}
