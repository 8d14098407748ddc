// Package p2p finds which peers of the fleet hold a piece of content.
//
// The abstract Router (Advertise, Withdraw, Lookup) lives here with an
// in-memory MemoryRouter; *Host implements it with a libp2p host and a private
// Kademlia DHT (protocol prefix /imgmesh, so it never joins the public IPFS
// DHT). Keys are strings: a digest "sha256:<hex>" / "sha512:<hex>" or a tag key
// made by TagKey. KeyCID maps a key to the DHT's CID, so the DHT key of a blob
// is the blob's own hash.
package p2p

import (
	"context"
	"errors"
)

// ErrInvalidKey is returned for a key that is neither a well-formed digest
// nor a tag key made by TagKey.
var ErrInvalidKey = errors.New("p2p: invalid key")

// ErrClosed is returned by a Router used after Close.
var ErrClosed = errors.New("p2p: closed")

// Holder is a peer that announced it holds a key.
type Holder struct {
	// ID is the holder's peer ID (base58).
	ID string
	// DataURL is "http://IP:PORT" of the holder's data plane: the IP is the
	// one we are connected to it on, the port is the one it told us. Empty
	// when not known (not connected, or it announced no data port).
	DataURL string
	// Addrs are the holder's libp2p multiaddrs, each ending in /p2p/ID.
	Addrs []string
}

// Router is content routing within the fleet.
//
// Delivery is best effort: a holder returned by Lookup may since have lost
// the content, so callers verify what they fetch and move on to the next
// holder or source.
type Router interface {
	// ID is this node's peer ID, as it appears in other nodes' Holder.ID.
	ID() string
	// PeerCount is how many other nodes this router reaches now; with none,
	// a lookup has nobody to ask.
	PeerCount() int
	// Advertise announces that this node holds keys. The announcement is
	// renewed periodically until the keys are withdrawn.
	Advertise(ctx context.Context, keys ...string) error
	// Withdraw stops announcing keys. What other nodes already learned may
	// outlive it for a while; see the implementation for how long.
	Withdraw(ctx context.Context, keys ...string) error
	// Lookup returns up to count holders of key other than this node. It
	// returns as soon as count holders are found, when the search is
	// exhausted, or when ctx's deadline passes, with what it found by then:
	// an expired budget is not an error. An unknown key gives an empty
	// result and no error.
	Lookup(ctx context.Context, key string, count int) ([]Holder, error)
}
