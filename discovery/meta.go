package discovery

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/hashicorp/memberlist"
)

// MetaMaxSize is the most bytes of metadata a member can carry (memberlist's
// node meta limit).
const MetaMaxSize = memberlist.MetaMaxSize

// ErrMetaTooLarge is returned when a Meta does not fit in MetaMaxSize bytes
// even with no libp2p addresses.
var ErrMetaTooLarge = errors.New("node meta too large")

// errBadMeta marks bytes that are not imgmesh node meta.
var errBadMeta = errors.New("not imgmesh node meta")

// Meta is what a member tells the fleet about itself.
type Meta struct {
	PeerID   string            // libp2p peer ID
	P2PAddrs []string          // libp2p multiaddrs, preferred first; trimmed to fit
	DataPort int               // TCP port of the data plane (0: none)
	Registry string            // address of the node's registry API
	Version  string            // imgmesh version
	Labels   map[string]string // operator labels (zone, line, ...)
}

// Equal reports whether m and o carry the same information.
func (m Meta) Equal(o Meta) bool {
	return m.PeerID == o.PeerID && m.DataPort == o.DataPort && m.Registry == o.Registry &&
		m.Version == o.Version && slices.Equal(m.P2PAddrs, o.P2PAddrs) && maps.Equal(m.Labels, o.Labels)
}

// clone returns a deep copy of m.
func (m Meta) clone() Meta {
	m.P2PAddrs = slices.Clone(m.P2PAddrs)
	m.Labels = maps.Clone(m.Labels)
	return m
}

// Wire format (version 1). Decoders ignore bytes after the fields they know,
// so later versions may only append:
//
//	version byte (1) | flags byte (bit 0: leaving)
//	uvarint DataPort | str PeerID | str Registry | str Version
//	uvarint nLabels | (str key, str value)* sorted by key
//	uvarint nAddrs | str addr*
//
// where str is a uvarint length followed by the bytes.
const (
	metaVersion  = 1
	flagLeaving  = 1 << 0
	metaMinBytes = 2
)

// encodeMeta encodes m in at most limit bytes, dropping libp2p addresses from
// the end of the list until it fits. It returns the bytes and how many
// addresses were kept; ErrMetaTooLarge if even no address does not fit.
func encodeMeta(m Meta, leaving bool, limit int) ([]byte, int, error) {
	if m.DataPort < 0 || m.DataPort > 65535 {
		return nil, 0, fmt.Errorf("node meta: data port %d out of range", m.DataPort)
	}
	var flags byte
	if leaving {
		flags |= flagLeaving
	}
	b := []byte{metaVersion, flags}
	b = binary.AppendUvarint(b, uint64(m.DataPort))
	b = appendStr(b, m.PeerID)
	b = appendStr(b, m.Registry)
	b = appendStr(b, m.Version)
	keys := slices.Sorted(maps.Keys(m.Labels))
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		if k == "" {
			return nil, 0, errors.New("node meta: empty label key")
		}
		b = appendStr(b, k)
		b = appendStr(b, m.Labels[k])
	}
	if need := len(b) + 1; need > limit {
		return nil, 0, fmt.Errorf("node meta: %d bytes without libp2p addresses, limit %d (shorten labels, version or registry address): %w",
			need, limit, ErrMetaTooLarge)
	}
	kept, size, addrBytes := 0, len(b)+uvarintLen(0), 0
	for i, a := range m.P2PAddrs {
		addrBytes += uvarintLen(uint64(len(a))) + len(a)
		s := len(b) + uvarintLen(uint64(i+1)) + addrBytes
		if s > limit {
			break
		}
		kept, size = i+1, s
	}
	b = binary.AppendUvarint(b, uint64(kept))
	for _, a := range m.P2PAddrs[:kept] {
		b = appendStr(b, a)
	}
	if len(b) != size { // the size arithmetic above and the encoder disagree
		panic(fmt.Sprintf("discovery: meta size %d, computed %d", len(b), size))
	}
	return b, kept, nil
}

// decodeMeta parses bytes made by encodeMeta (or a later, appended-to version).
func decodeMeta(b []byte) (m Meta, leaving bool, err error) {
	if len(b) < metaMinBytes || b[0] < metaVersion {
		return Meta{}, false, errBadMeta
	}
	leaving = b[1]&flagLeaving != 0
	r := reader{b: b[2:]}
	port := r.uvarint()
	if port > 65535 {
		r.err = errBadMeta
	}
	m.DataPort = int(port)
	m.PeerID = r.str()
	m.Registry = r.str()
	m.Version = r.str()
	if n := r.count(); n > 0 {
		m.Labels = make(map[string]string, n)
		for range n {
			k := r.str()
			m.Labels[k] = r.str()
		}
	}
	if n := r.count(); n > 0 {
		m.P2PAddrs = make([]string, 0, n)
		for range n {
			m.P2PAddrs = append(m.P2PAddrs, r.str())
		}
	}
	if r.err != nil {
		return Meta{}, false, r.err
	}
	return m, leaving, nil
}

func appendStr(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func uvarintLen(v uint64) int {
	var buf [binary.MaxVarintLen64]byte
	return binary.PutUvarint(buf[:], v)
}

// reader decodes uvarints and strings, remembering the first error.
type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errBadMeta
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads an element count; each element takes at least one byte, so a
// count larger than what is left is malformed.
func (r *reader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = errBadMeta
		return 0
	}
	return int(n)
}

func (r *reader) str() string {
	n := r.uvarint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errBadMeta
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
