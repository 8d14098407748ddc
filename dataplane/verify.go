package dataplane

import (
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// VerifyReader returns a reader of r that hashes what passes through and,
// at r's EOF, returns an error wrapping blobstore.ErrSizeMismatch or
// blobstore.ErrDigestMismatch instead of io.EOF unless exactly size bytes
// (-1: any) hashing to d were read. Reading more than size bytes fails at
// once. An unsupported digest fails on the first Read. Errors are sticky.
//
// go-containerregistry's verify.ReadCloser does the same but is internal.
// Hashing runs inline: overlapping it with receiving on another goroutine
// (double buffering) measured no faster on a loaded 2-core machine and
// costs a copy and buffers per transfer.
func VerifyReader(r io.Reader, d digest.Digest, size int64) io.Reader {
	v := &verifier{r: r, want: d, size: size}
	if err := blobstore.CheckDigest(d); err != nil {
		v.err = err
		return v
	}
	if d.Algorithm() == digest.SHA512 {
		v.h = sha512.New()
	} else {
		v.h = sha256.New()
	}
	return v
}

type verifier struct {
	r    io.Reader
	h    hash.Hash
	want digest.Digest
	size int64
	n    int64
	err  error // sticky
}

func (v *verifier) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	if v.size >= 0 && v.n > v.size {
		v.err = fmt.Errorf("read more than %d bytes of %s: %w", v.size, v.want, blobstore.ErrSizeMismatch)
		return n, v.err
	}
	v.h.Write(p[:n])
	switch {
	case err == io.EOF:
		v.err = v.check()
		return n, v.err
	case err != nil:
		v.err = err
	}
	return n, err
}

// check compares at EOF; io.EOF when everything matched.
func (v *verifier) check() error {
	if v.size >= 0 && v.n != v.size {
		return fmt.Errorf("got %d bytes of %s, want %d: %w", v.n, v.want, v.size, blobstore.ErrSizeMismatch)
	}
	if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
		return fmt.Errorf("got %s, want %s: %w", got, v.want, blobstore.ErrDigestMismatch)
	}
	return io.EOF
}
