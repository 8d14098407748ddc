package dataplane

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

func TestVerifyReader(t *testing.T) {
	b := randomBytes(t, 200_000)
	d := digest.FromBytes(b)
	sum := sha512.Sum512(b)
	d512 := digest.NewDigestFromBytes(digest.SHA512, sum[:])
	flipped := bytes.Clone(b)
	flipped[123_456] ^= 1
	for _, tc := range []struct {
		name    string
		in      []byte
		d       digest.Digest
		size    int64
		wantErr error // nil: reads b whole, then io.EOF
	}{
		{name: "sha256", in: b, d: d, size: int64(len(b))},
		{name: "sha256 any size", in: b, d: d, size: -1},
		{name: "sha512", in: b, d: d512, size: int64(len(b))},
		{name: "one bit flipped", in: flipped, d: d, size: int64(len(b)), wantErr: blobstore.ErrDigestMismatch},
		{name: "short", in: b[:len(b)-1], d: d, size: int64(len(b)), wantErr: blobstore.ErrSizeMismatch},
		{name: "short any size", in: b[:len(b)-1], d: d, size: -1, wantErr: blobstore.ErrDigestMismatch},
		{name: "long", in: append(bytes.Clone(b), 0), d: d, size: int64(len(b)), wantErr: blobstore.ErrSizeMismatch},
		{name: "unsupported algorithm", in: b, d: "md5:d41d8cd98f00b204e9800998ecf8427e", size: -1, wantErr: blobstore.ErrUnsupportedDigest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// OneByteReader and DataErrReader exercise small reads and data
			// arriving together with io.EOF.
			for _, r := range []io.Reader{bytes.NewReader(tc.in), iotest.DataErrReader(iotest.HalfReader(bytes.NewReader(tc.in)))} {
				got, err := io.ReadAll(VerifyReader(r, tc.d, tc.size))
				if tc.wantErr == nil {
					if err != nil || !bytes.Equal(got, b) {
						t.Fatalf("read %d bytes, err %v", len(got), err)
					}
					continue
				}
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
			}
		})
	}
	t.Run("error is sticky", func(t *testing.T) {
		v := VerifyReader(bytes.NewReader(flipped), d, -1)
		_, err := io.ReadAll(v)
		if _, err2 := v.Read(make([]byte, 10)); err2 == nil || err2 != err {
			t.Fatalf("second read after failure: %v (first %v)", err2, err)
		}
	})
}
