package node

import "github.com/opencontainers/go-digest"

// FirstRanked returns which of the member IDs the fleet asks first to
// fetch d from upstream.
func FirstRanked(d digest.Digest, ids []string) string {
	members := make([]Member, len(ids))
	for i, id := range ids {
		members[i] = Member{ID: id}
	}
	return rank(d, members)[0].ID
}
