package archive

import (
	"bytes"
	"fmt"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"

	_ "crypto/sha256" // the digest algorithms blobs are named by
	_ "crypto/sha512"
)

// verifier passes bytes through and fails when they are more than size, or
// at the end when they are fewer or hash to anything but d. Nothing
// downstream sees the end of a blob that did not verify.
type verifier struct {
	r    io.Reader
	c    io.Closer
	d    v1.Hash
	h    hash.Hash
	size int64
	n    int64
}

// verify wraps rc so that reading it checks size and digest d.
func verify(rc io.ReadCloser, d v1.Hash, size int64) (io.ReadCloser, error) {
	h, err := newHash(d)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return &verifier{r: rc, c: rc, d: d, h: h, size: size}, nil
}

func newHash(d v1.Hash) (hash.Hash, error) {
	dg := digest.Digest(d.String())
	if err := dg.Validate(); err != nil {
		return nil, fmt.Errorf("digest %q: %w: %v", d, ErrUnsupported, err)
	}
	return dg.Algorithm().Hash(), nil
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.n += int64(n)
	v.h.Write(p[:n])
	if v.n > v.size {
		return n, fmt.Errorf("blob %s: more than its %d bytes: %w", v.d, v.size, ErrDigest)
	}
	if err == io.EOF {
		if v.n != v.size {
			return n, fmt.Errorf("blob %s: %d bytes, want %d: %w", v.d, v.n, v.size, ErrDigest)
		}
		if got := v.sum(); got != v.d.Hex {
			return n, fmt.Errorf("blob %s: the bytes hash to %s:%s: %w", v.d, v.d.Algorithm, got, ErrDigest)
		}
	}
	return n, err
}

func (v *verifier) sum() string { return fmt.Sprintf("%x", v.h.Sum(nil)) }

func (v *verifier) Close() error { return v.c.Close() }

// checkBytes verifies a whole blob held in memory.
func checkBytes(b []byte, d v1.Hash, size int64) error {
	rc, err := verify(io.NopCloser(bytes.NewReader(b)), d, size)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, rc)
	return err
}
