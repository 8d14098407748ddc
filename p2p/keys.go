package p2p

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"
)

// tagPrefix starts every tag key made by TagKey.
const tagPrefix = "tag:"

// tagDomain separates tag hashes from every other use of sha256.
const tagDomain = "imgmesh-tag\x00"

var (
	// tagRE is the OCI distribution-spec tag grammar.
	tagRE = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// repoRE is a registry host (optionally with a port) and a repository
	// path, as in "docker.io/library/nginx" or "localhost:5000/app".
	repoRE = regexp.MustCompile(`^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)+$`)
)

// TagKey is the routing key of tag in the repository repoKey (registry host
// and repository path, e.g. "docker.io/library/nginx"). KeyCID rejects the
// result when either part is malformed.
func TagKey(repoKey, tag string) string {
	return tagPrefix + repoKey + ":" + tag
}

// KeyCID maps a routing key to its DHT CID (v1, raw codec).
//
// A digest "sha256:<64 hex>" or "sha512:<128 hex>" keeps its own multihash,
// so the CID's hash is the content's hash. A tag key from TagKey maps to
// sha2-256("imgmesh-tag\x00" + repoKey + ":" + tag).
func KeyCID(key string) (cid.Cid, error) {
	if ref, ok := strings.CutPrefix(key, tagPrefix); ok {
		i := strings.LastIndexByte(ref, ':')
		if i < 0 {
			return cid.Undef, fmt.Errorf("%w: tag key %q has no tag", ErrInvalidKey, key)
		}
		repo, tag := ref[:i], ref[i+1:]
		if len(repo) > 255 || !repoRE.MatchString(repo) {
			return cid.Undef, fmt.Errorf("%w: bad repository in tag key %q", ErrInvalidKey, key)
		}
		if !tagRE.MatchString(tag) {
			return cid.Undef, fmt.Errorf("%w: bad tag in tag key %q", ErrInvalidKey, key)
		}
		sum := sha256.Sum256([]byte(tagDomain + ref))
		return rawCID(sum[:], multihash.SHA2_256)
	}
	alg, hexsum, ok := strings.Cut(key, ":")
	if !ok {
		return cid.Undef, fmt.Errorf("%w: %q is neither a digest nor a tag key", ErrInvalidKey, key)
	}
	var code uint64
	var size int
	switch alg {
	case "sha256":
		code, size = multihash.SHA2_256, sha256.Size
	case "sha512":
		code, size = multihash.SHA2_512, 64
	default:
		return cid.Undef, fmt.Errorf("%w: unsupported digest algorithm %q", ErrInvalidKey, alg)
	}
	if len(hexsum) != 2*size || strings.ToLower(hexsum) != hexsum {
		return cid.Undef, fmt.Errorf("%w: %s digest needs %d lowercase hex digits", ErrInvalidKey, alg, 2*size)
	}
	sum, err := hex.DecodeString(hexsum)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %s digest is not hex", ErrInvalidKey, alg)
	}
	return rawCID(sum, code)
}

func rawCID(sum []byte, code uint64) (cid.Cid, error) {
	mh, err := multihash.Encode(sum, code)
	if err != nil {
		return cid.Undef, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return cid.NewCidV1(cid.Raw, mh), nil
}
