package node

import (
	"crypto/sha256"
	"encoding/binary"
	"slices"

	"github.com/opencontainers/go-digest"
)

// Member is one live fleet member as the swarm sees it.
type Member struct {
	ID      string // libp2p peer ID
	DataURL string // base URL of its data plane; empty for this node
	Self    bool
}

// Members lists the live fleet, this node included; the gossip membership
// implements it in the wiring. It decides which node fetches a blob from
// upstream for everyone.
type Members interface {
	Members() []Member
}

// rank orders members by rendezvous hash of (digest, member ID): every node
// computes the same order from the same membership, with no coordinator,
// and when the first leaves only its blobs move to the next.
func rank(d digest.Digest, members []Member) []Member {
	score := func(m Member) uint64 {
		h := sha256.New()
		h.Write([]byte(d))
		h.Write([]byte{0})
		h.Write([]byte(m.ID))
		return binary.BigEndian.Uint64(h.Sum(nil))
	}
	out := slices.Clone(members)
	scores := make(map[string]uint64, len(out))
	for _, m := range out {
		scores[m.ID] = score(m)
	}
	slices.SortFunc(out, func(a, b Member) int {
		switch sa, sb := scores[a.ID], scores[b.ID]; {
		case sa > sb:
			return -1
		case sa < sb:
			return 1
		}
		return 0
	})
	return out
}
