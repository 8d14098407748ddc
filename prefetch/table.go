package prefetch

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Bounds of what a node keeps.
const (
	MaxOrders          = 256  // the oldest deadline goes first
	MaxReportsPerOrder = 4096 // members per order
	// orphanTTL: reports of an order not (yet) known are kept this long
	// after their last update: gossip may bring a report before its order.
	orphanTTL = time.Hour
)

// table is every order and the latest report of each member per order.
// It is not safe for concurrent use: the Manager locks it.
type table struct {
	retention time.Duration // an order is dropped this long after its deadline
	orders    map[string]Order
	reports   map[string]map[string]Report // order ID → member → report
}

func newTable(retention time.Duration) *table {
	return &table{retention: retention, orders: map[string]Order{}, reports: map[string]map[string]Report{}}
}

// expired reports whether o is past keeping.
func (t *table) expired(o Order, now time.Time) bool { return now.After(o.Deadline.Add(t.retention)) }

// addOrder keeps o unless it is invalid, already known, or past keeping.
// When full, the order with the oldest deadline makes room.
func (t *table) addOrder(o Order, now time.Time) (bool, error) {
	if err := o.validate(); err != nil {
		return false, err
	}
	if _, ok := t.orders[o.ID]; ok || t.expired(o, now) {
		return false, nil
	}
	if len(t.orders) >= MaxOrders {
		oldest := slices.MinFunc(slices.Collect(maps.Values(t.orders)), func(a, b Order) int { return a.Deadline.Compare(b.Deadline) })
		if !oldest.Deadline.Before(o.Deadline) {
			return false, nil // o would be the first to go
		}
		t.dropOrder(oldest.ID)
	}
	t.orders[o.ID] = o
	return true, nil
}

func (t *table) dropOrder(id string) {
	delete(t.orders, id)
	delete(t.reports, id)
}

// addReport keeps r when it is newer than what the table has for its member
// and order.
func (t *table) addReport(r Report) (bool, error) {
	if err := r.validate(); err != nil {
		return false, err
	}
	byMember := t.reports[r.Order]
	if cur, ok := byMember[r.Member]; ok && cur.Version >= r.Version {
		return false, nil
	}
	if byMember == nil {
		if len(t.reports) >= MaxOrders*2 { // orphans of unknown orders are bounded too
			return false, nil
		}
		byMember = map[string]Report{}
		t.reports[r.Order] = byMember
	}
	if _, ok := byMember[r.Member]; !ok && len(byMember) >= MaxReportsPerOrder {
		return false, nil
	}
	byMember[r.Member] = r
	return true, nil
}

// report returns member's report of order id.
func (t *table) report(id, member string) (Report, bool) {
	r, ok := t.reports[id][member]
	return r, ok
}

// expire drops orders past keeping with their reports, and reports of
// unknown orders not updated for orphanTTL. It reports whether anything
// was dropped.
func (t *table) expire(now time.Time) bool {
	dropped := false
	for id, o := range t.orders {
		if t.expired(o, now) {
			t.dropOrder(id)
			dropped = true
		}
	}
	for id, byMember := range t.reports {
		if _, ok := t.orders[id]; ok {
			continue
		}
		for member, r := range byMember {
			if now.Sub(r.Updated) > orphanTTL {
				delete(byMember, member)
				dropped = true
			}
		}
		if len(byMember) == 0 {
			delete(t.reports, id)
		}
	}
	return dropped
}

// snapshot is the table as gossip state and as the file's content.
type snapshot struct {
	V       int      `json:"v"`
	Orders  []Order  `json:"orders"`
	Reports []Report `json:"reports"`
}

const snapshotVersion = 1

func (t *table) snapshot() snapshot {
	s := snapshot{V: snapshotVersion, Orders: []Order{}, Reports: []Report{}}
	for _, o := range t.orders {
		s.Orders = append(s.Orders, o)
	}
	slices.SortFunc(s.Orders, func(a, b Order) int {
		return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	for _, byMember := range t.reports {
		for _, r := range byMember {
			s.Reports = append(s.Reports, r)
		}
	}
	slices.SortFunc(s.Reports, func(a, b Report) int {
		return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.Member, b.Member))
	})
	return s
}

func decodeSnapshot(b []byte) (snapshot, error) {
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return snapshot{}, fmt.Errorf("prefetch state: %w", err)
	}
	if s.V != snapshotVersion {
		return snapshot{}, fmt.Errorf("prefetch state: version %d, want %d", s.V, snapshotVersion)
	}
	return s, nil
}

// message is what Broadcast carries: one order or one report.
type message struct {
	Order  *Order  `json:"order,omitempty"`
	Report *Report `json:"report,omitempty"`
}
