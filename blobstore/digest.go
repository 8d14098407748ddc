package blobstore

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CheckDigest reports whether d is a well-formed digest of a supported
// algorithm (sha256 or sha512), wrapping ErrUnsupportedDigest otherwise.
func CheckDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		if err == digest.ErrDigestUnsupported {
			return fmt.Errorf("%q: %w", d, ErrUnsupportedDigest)
		}
		return fmt.Errorf("%q: %w", d, err)
	}
	switch d.Algorithm() {
	case digest.SHA256, digest.SHA512:
		return nil
	}
	return fmt.Errorf("%q: %w", d, ErrUnsupportedDigest)
}

// Verify checks an in-memory blob against size (-1: any) and expected.
func Verify(b []byte, size int64, expected digest.Digest) error {
	if err := CheckDigest(expected); err != nil {
		return err
	}
	if size >= 0 && int64(len(b)) != size {
		return fmt.Errorf("got %d bytes, want %d: %w", len(b), size, ErrSizeMismatch)
	}
	var got digest.Digest
	switch expected.Algorithm() {
	case digest.SHA512:
		sum := sha512.Sum512(b)
		got = digest.NewDigestFromBytes(digest.SHA512, sum[:])
	default:
		sum := sha256.Sum256(b)
		got = digest.NewDigestFromBytes(digest.SHA256, sum[:])
	}
	if got != expected {
		return fmt.Errorf("got %s, want %s: %w", got, expected, ErrDigestMismatch)
	}
	return nil
}

// Descriptor returns the referrers-API descriptor of a manifest record.
func (m Manifest) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{
		MediaType:    m.MediaType,
		Digest:       m.Digest,
		Size:         m.Size,
		ArtifactType: m.ArtifactType,
		Annotations:  m.Annotations,
	}
}
