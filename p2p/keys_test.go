package p2p

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
)

func TestKeyCIDDigestsKeepTheirHash(t *testing.T) {
	s256 := sha256.Sum256([]byte("blob"))
	s512 := sha512.Sum512([]byte("blob"))
	for _, tc := range []struct {
		name string
		key  string
		code uint64
		sum  []byte
	}{
		{"sha256", "sha256:" + hex.EncodeToString(s256[:]), multihash.SHA2_256, s256[:]},
		{"sha512", "sha512:" + hex.EncodeToString(s512[:]), multihash.SHA2_512, s512[:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := KeyCID(tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if c.Version() != 1 || c.Type() != cid.Raw {
				t.Fatalf("CID %s: version %d codec %#x, want v1 raw", c, c.Version(), c.Type())
			}
			dec, err := multihash.Decode(c.Hash())
			if err != nil {
				t.Fatal(err)
			}
			if dec.Code != tc.code || hex.EncodeToString(dec.Digest) != hex.EncodeToString(tc.sum) {
				t.Fatalf("multihash %#x %x, want %#x %x", dec.Code, dec.Digest, tc.code, tc.sum)
			}
		})
	}
}

func TestTagKey(t *testing.T) {
	k := TagKey("docker.io/library/nginx", "1.27")
	c, err := KeyCID(k)
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte("imgmesh-tag\x00docker.io/library/nginx:1.27"))
	dec, _ := multihash.Decode(c.Hash())
	if dec.Code != multihash.SHA2_256 || string(dec.Digest) != string(want[:]) {
		t.Fatalf("tag CID hash %x, want sha256 %x", dec.Digest, want)
	}
	other, err := KeyCID(TagKey("docker.io/library/nginx", "1.28"))
	if err != nil || other.Equals(c) {
		t.Fatalf("another tag must give another CID (err %v)", err)
	}
	withPort, err := KeyCID(TagKey("localhost:5000/team/app", "v1"))
	if err != nil || withPort.Equals(c) {
		t.Fatalf("registry with a port: %v", err)
	}
	// A tag key never equals the digest of the same bytes.
	plain := sha256.Sum256([]byte("docker.io/library/nginx:1.27"))
	if d, _ := KeyCID("sha256:" + hex.EncodeToString(plain[:])); d.Equals(c) {
		t.Fatal("tag key is not domain-separated")
	}
}

func TestKeyCIDRejectsMalformed(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, tc := range []struct{ name, key string }{
		{"empty", ""},
		{"no algorithm", h},
		{"unknown algorithm", "md5:" + strings.Repeat("ab", 16)},
		{"sha384 unsupported", "sha384:" + strings.Repeat("ab", 48)},
		{"short", "sha256:" + h[:62]},
		{"long", "sha256:" + h + "ab"},
		{"uppercase hex", "sha256:" + strings.ToUpper(h)},
		{"not hex", "sha256:" + strings.Repeat("zz", 32)},
		{"sha512 with sha256 length", "sha512:" + h},
		{"tag without tag", "tag:docker.io/library/nginx"},
		{"tag with empty tag", TagKey("docker.io/library/nginx", "")},
		{"tag with bad tag", TagKey("docker.io/library/nginx", "-x")},
		{"tag too long", TagKey("docker.io/library/nginx", strings.Repeat("a", 129))},
		{"tag with empty repo", TagKey("", "latest")},
		{"tag with uppercase path", TagKey("docker.io/Library/nginx", "latest")},
		{"tag with space", TagKey("docker.io/library/ng inx", "latest")},
		{"tag without path", TagKey("nginx", "latest")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := KeyCID(tc.key); !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("KeyCID(%q) = %v, %v; want ErrInvalidKey", tc.key, c, err)
			}
		})
	}
}
