package prefetch

import (
	"context"
	"encoding/json"
	"slices"
	"time"
)

// OnMessage takes a message another member broadcast (discovery's Channel).
func (m *Manager) OnMessage(b []byte) {
	var msg message
	if err := json.Unmarshal(b, &msg); err != nil {
		m.log.Debug("prefetch message not understood", "err", err)
		return
	}
	var s snapshot
	if msg.Order != nil {
		s.Orders = append(s.Orders, *msg.Order)
	}
	if msg.Report != nil {
		s.Reports = append(s.Reports, *msg.Report)
	}
	m.merge(s)
}

// maxStateBytes bounds State: past it, only orders and this member's own
// reports are sent (gossip brings the others' reports from them).
const maxStateBytes = 8 << 20

// State is this node's orders and reports for gossip push/pull.
func (m *Manager) State() []byte {
	m.mu.Lock()
	s := m.t.snapshot()
	for i := range s.Orders {
		s.Orders[i] = *s.Orders[i].gossiped()
	}
	self := ""
	if m.rt != nil {
		self = m.rt.Self
	}
	m.mu.Unlock()
	b, err := json.Marshal(s)
	if err != nil {
		return nil
	}
	if len(b) > maxStateBytes {
		s.Reports = slices.DeleteFunc(s.Reports, func(r Report) bool { return r.Member != self })
		if b, err = json.Marshal(s); err != nil {
			return nil
		}
	}
	return b
}

// OnState merges another member's State.
func (m *Manager) OnState(b []byte) {
	s, err := decodeSnapshot(b)
	if err != nil {
		m.log.Debug("prefetch state not understood", "err", err)
		return
	}
	m.merge(s)
}

// merge adds what s brings. A report about this member from elsewhere is
// never taken: this member answers it with its own, newer one.
func (m *Manager) merge(s snapshot) {
	now := m.opts.Now()
	var resend []Report
	newOrders := false
	m.mu.Lock()
	for _, o := range s.Orders {
		added, err := m.t.addOrder(o, now)
		if err != nil {
			m.log.Debug("order from the fleet refused", "order", o.ID, "err", err)
			continue
		}
		if added {
			newOrders, m.unsaved = true, true
			m.log.Info("prefetch order received", "order", o.ID, "refs", o.Refs, "selector", o.Selector)
			if own := m.markPendingLocked(o); own != nil {
				resend = append(resend, *own)
			}
		}
	}
	for _, r := range s.Reports {
		if m.rt != nil && r.Member == m.rt.Self {
			// Our own report coming back (same version) needs no answer;
			// a newer claim about us (another member's) is answered with
			// our report under a version above it.
			if own, ok := m.t.report(r.Order, r.Member); ok && r.Version > own.Version {
				m.clock = max(m.clock, r.Version)
				own.Version = versionAfter(m.clock, now)
				m.clock = own.Version
				m.t.reports[r.Order][r.Member] = own
				resend = append(resend, own)
			}
			m.clock = max(m.clock, r.Version)
			continue
		}
		prev, had := m.t.report(r.Order, r.Member)
		if added, err := m.t.addReport(r); err != nil {
			m.log.Debug("report from the fleet refused", "err", err)
		} else if added && (!had || prev.State != r.State) {
			m.unsaved = true
		}
	}
	m.mu.Unlock()
	for i := range resend {
		m.send(message{Report: &resend[i]})
	}
	if newOrders {
		m.kick()
	}
}

// send gossips msg (nothing for a lone node).
func (m *Manager) send(msg message) {
	m.mu.Lock()
	rt, closed := m.rt, m.closed
	m.mu.Unlock()
	if rt == nil || rt.Broadcast == nil || closed {
		return
	}
	if msg.Order != nil {
		msg.Order = msg.Order.gossiped()
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return
	}
	name := "" // orders are each sent once
	if msg.Report != nil {
		name = "report/" + msg.Report.Order // a newer report replaces one still queued
	}
	if err := rt.Broadcast(name, b); err != nil {
		m.log.Debug("prefetch gossip", "err", err)
	}
}

// flushLoop gossips progress at most once per ReportInterval per order,
// writes the file when something changed, and expires old orders.
func (m *Manager) flushLoop(ctx context.Context) {
	tick := time.NewTicker(m.opts.ReportInterval)
	defer tick.Stop()
	lastExpire := m.opts.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.mu.Lock()
		var out []Report
		for id := range m.dirty {
			if r, ok := m.t.report(id, m.rt.Self); ok {
				out = append(out, r)
			}
		}
		clear(m.dirty)
		if now := m.opts.Now(); now.Sub(lastExpire) > time.Minute {
			lastExpire = now
			if m.t.expire(now) {
				m.unsaved = true
			}
		}
		m.mu.Unlock()
		for i := range out {
			m.send(message{Report: &out[i]})
		}
		if err := m.save(); err != nil {
			m.log.Warn("write prefetch state", "err", err)
		}
	}
}
