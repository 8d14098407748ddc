package discovery

import "sync"

// delegate implements memberlist.Delegate: it hands memberlist this node's
// encoded meta. It is also the seam for fleet broadcasts (prefetch orders,
// status): a memberlist.TransmitLimitedQueue in this struct, filled by a
// Fleet method, drained by GetBroadcasts, with NotifyMsg dispatching what
// arrives. None are sent yet.
type delegate struct {
	mu   sync.Mutex
	meta []byte // encoded, at most MetaMaxSize bytes
}

func (d *delegate) setMeta(b []byte) {
	d.mu.Lock()
	d.meta = b
	d.mu.Unlock()
}

// NodeMeta implements memberlist.Delegate.
func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.meta) > limit { // cannot happen: encodeMeta enforces MetaMaxSize
		return nil
	}
	return d.meta
}

// NotifyMsg implements memberlist.Delegate; no user messages are defined yet.
func (d *delegate) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate; nothing to broadcast yet.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }

// LocalState implements memberlist.Delegate; no state is exchanged on push/pull.
func (d *delegate) LocalState(join bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {}
