package discovery

import "sync"

// delegate implements memberlist.Delegate: it hands memberlist this node's
// encoded meta, and carries the fleet's Channel (broadcast.go): outgoing
// gossip drained by GetBroadcasts, what arrives by NotifyMsg and
// MergeRemoteState, this node's state by LocalState.
type delegate struct {
	mu   sync.Mutex
	meta []byte // encoded, at most MetaMaxSize bytes
	bc   *broadcaster
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

// NotifyMsg implements memberlist.Delegate: a broadcast from another member.
func (d *delegate) NotifyMsg(b []byte) { d.bc.received(b, false) }

// GetBroadcasts implements memberlist.Delegate: what Fleet.Broadcast queued.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.bc.queue.GetBroadcasts(overhead, limit)
}

// LocalState implements memberlist.Delegate: the Channel's State on push/pull.
func (d *delegate) LocalState(join bool) []byte { return d.bc.localState() }

// MergeRemoteState implements memberlist.Delegate: another member's State.
func (d *delegate) MergeRemoteState(buf []byte, join bool) { d.bc.received(buf, true) }
