package prefetch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

var t0 = time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)

func order(id string, created time.Time, timeout time.Duration) Order {
	return Order{ID: id, Refs: []string{"plant.local/line/app:v1"}, Created: created, Deadline: created.Add(timeout)}
}

func TestTableMerge(t *testing.T) {
	tests := []struct {
		name    string
		orders  []Order
		reports []Report
		now     time.Time
		// want: order IDs kept, and member → state for order "a"
		wantOrders []string
		wantA      map[string]State
	}{
		{
			name:       "newest report of each member wins, in any arrival order",
			orders:     []Order{order("a", t0, time.Hour)},
			reports:    []Report{{Order: "a", Member: "n1", State: Pulling, Version: 5}, {Order: "a", Member: "n1", State: Complete, Version: 9}, {Order: "a", Member: "n1", State: Pending, Version: 2}, {Order: "a", Member: "n2", State: Failed, Version: 1}},
			now:        t0,
			wantOrders: []string{"a"},
			wantA:      map[string]State{"n1": Complete, "n2": Failed},
		},
		{
			name:       "the same order twice is kept once",
			orders:     []Order{order("a", t0, time.Hour), order("a", t0, time.Hour)},
			now:        t0,
			wantOrders: []string{"a"},
			wantA:      map[string]State{},
		},
		{
			name:       "an order past its deadline and the retention is refused",
			orders:     []Order{order("a", t0, time.Hour), order("old", t0.Add(-48*time.Hour), time.Hour)},
			now:        t0,
			wantOrders: []string{"a"},
			wantA:      map[string]State{},
		},
		{
			name:       "a report before its order is kept",
			reports:    []Report{{Order: "a", Member: "n1", State: Pulling, Version: 1, Updated: t0}},
			now:        t0,
			wantOrders: []string{},
			wantA:      map[string]State{"n1": Pulling},
		},
		{
			name:       "invalid orders and reports are refused",
			orders:     []Order{{ID: "bad", Refs: []string{"UPPER/Case"}, Created: t0, Deadline: t0.Add(time.Hour)}, {ID: "noref", Created: t0, Deadline: t0.Add(time.Hour)}, order("a", t0, time.Hour)},
			reports:    []Report{{Order: "a", Member: "n1", State: "dancing", Version: 1}, {Order: "a", Member: "", State: Complete, Version: 1}},
			now:        t0,
			wantOrders: []string{"a"},
			wantA:      map[string]State{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tb := newTable(24 * time.Hour)
			for _, o := range tt.orders {
				_, _ = tb.addOrder(o, tt.now)
			}
			for _, r := range tt.reports {
				_, _ = tb.addReport(r)
			}
			s := tb.snapshot()
			var got []string
			for _, o := range s.Orders {
				got = append(got, o.ID)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.wantOrders) && !(len(got) == 0 && len(tt.wantOrders) == 0) {
				t.Errorf("orders %v, want %v", got, tt.wantOrders)
			}
			gotA := map[string]State{}
			for _, r := range s.Reports {
				if r.Order == "a" {
					gotA[r.Member] = r.State
				}
			}
			if fmt.Sprint(gotA) != fmt.Sprint(tt.wantA) {
				t.Errorf("reports of a %v, want %v", gotA, tt.wantA)
			}
		})
	}
}

func TestTableExpireAndBounds(t *testing.T) {
	tb := newTable(24 * time.Hour)
	if ok, err := tb.addOrder(order("a", t0, time.Hour), t0); !ok || err != nil {
		t.Fatal(ok, err)
	}
	tb.addReport(Report{Order: "a", Member: "n1", State: Complete, Version: 1, Updated: t0})
	tb.addReport(Report{Order: "ghost", Member: "n1", State: Pulling, Version: 1, Updated: t0})
	if tb.expire(t0.Add(30 * time.Minute)) {
		t.Fatal("expire dropped something after 30 minutes")
	}
	if !tb.expire(t0.Add(26 * time.Hour)) {
		t.Fatal("nothing expired a day after the deadline")
	}
	if s := tb.snapshot(); len(s.Orders) != 0 || len(s.Reports) != 0 {
		t.Fatalf("after expiry: %+v", s)
	}

	// Full: the order with the oldest deadline makes room; an order older
	// than all is refused.
	tb = newTable(24 * time.Hour)
	for i := range MaxOrders {
		if ok, _ := tb.addOrder(order(fmt.Sprint(i), t0.Add(time.Duration(i)*time.Second), time.Hour), t0); !ok {
			t.Fatalf("order %d refused", i)
		}
	}
	if ok, _ := tb.addOrder(order("older", t0.Add(-time.Second), time.Hour), t0); ok {
		t.Fatal("an order older than every kept one was added to a full table")
	}
	if ok, _ := tb.addOrder(order("newer", t0.Add(time.Hour), time.Hour), t0); !ok {
		t.Fatal("a new order was refused by a full table")
	}
	if _, ok := tb.orders["0"]; ok || len(tb.orders) != MaxOrders {
		t.Fatalf("full table: %d orders, oldest still there: %v", len(tb.orders), ok)
	}
}

func TestSelects(t *testing.T) {
	tests := []struct {
		name     string
		selector map[string]string
		labels   map[string]string
		want     bool
	}{
		{name: "empty selector selects all", labels: map[string]string{"line": "3"}, want: true},
		{name: "empty selector, no labels", want: true},
		{name: "match", selector: map[string]string{"line": "3"}, labels: map[string]string{"line": "3", "zone": "paint"}, want: true},
		{name: "every label must match", selector: map[string]string{"line": "3", "zone": "weld"}, labels: map[string]string{"line": "3", "zone": "paint"}},
		{name: "missing label", selector: map[string]string{"line": "3"}, labels: map[string]string{"zone": "paint"}},
		{name: "empty value is a value", selector: map[string]string{"line": ""}, labels: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (Order{Selector: tt.selector}).Selects(tt.labels); got != tt.want {
				t.Fatalf("Selects = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestParseRef(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name, in string
		want     Ref
		target   node.Name // with default registry docker.io
		ref      string
		err      bool
	}{
		{name: "docker hub short", in: "nginx:1.27", want: Ref{Repo: "nginx", Tag: "1.27"},
			target: node.Name{Repo: "library/nginx"}, ref: "1.27"},
		{name: "default tag", in: "team/app", want: Ref{Repo: "team/app", Tag: "latest"},
			target: node.Name{Repo: "team/app"}, ref: "latest"},
		{name: "registry with port", in: "127.0.0.1:5000/test/app:v1", want: Ref{Registry: "127.0.0.1:5000", Repo: "test/app", Tag: "v1"},
			target: node.Name{NS: "127.0.0.1:5000", Repo: "test/app"}, ref: "v1"},
		{name: "docker.io explicit", in: "index.docker.io/nginx", want: Ref{Registry: "docker.io", Repo: "nginx", Tag: "latest"},
			target: node.Name{NS: "docker.io", Repo: "library/nginx"}, ref: "latest"},
		{name: "localhost", in: "localhost/app@" + d, want: Ref{Registry: "localhost", Repo: "app", Digest: d},
			target: node.Name{NS: "localhost", Repo: "app"}, ref: d},
		{name: "tag and digest: digest wins", in: "plant.local/app:v1@" + d, want: Ref{Registry: "plant.local", Repo: "app", Tag: "v1", Digest: d},
			target: node.Name{NS: "plant.local", Repo: "app"}, ref: d},
		{name: "uppercase repo", in: "Team/App", err: true},
		{name: "bad digest", in: "app@sha256:xyz", err: true},
		{name: "bad tag", in: "app:-x", err: true},
		{name: "empty", in: "", err: true},
		{name: "spaces", in: " app", err: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRef(tt.in)
			if tt.err {
				if err == nil {
					t.Fatalf("ParseRef(%q) = %+v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRef(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			name, ref := target(got, "docker.io")
			if name != tt.target || ref != tt.ref {
				t.Fatalf("target = %+v %q, want %+v %q", name, ref, tt.target, tt.ref)
			}
		})
	}
}

func TestNewOrderValidates(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		ok   bool
	}{
		{name: "defaults", req: Request{Refs: []string{"app:v1"}}, ok: true},
		{name: "everything", req: Request{Refs: []string{"app:v1", "plant.local/x"}, Selector: map[string]string{"line": "3"}, Platforms: []string{"linux/arm64/v8"}, Timeout: "10m"}, ok: true},
		{name: "no refs", req: Request{}},
		{name: "bad ref", req: Request{Refs: []string{"App"}}},
		{name: "bad platform", req: Request{Refs: []string{"app"}, Platforms: []string{"arm64"}}},
		{name: "bad timeout", req: Request{Refs: []string{"app"}, Timeout: "soon"}},
		{name: "timeout too long", req: Request{Refs: []string{"app"}, Timeout: "9000h"}},
		{name: "empty selector key", req: Request{Refs: []string{"app"}, Selector: map[string]string{"": "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := newOrder(tt.req, "n1", nil, t0)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				if o.ID == "" || o.Origin != "n1" || !o.Deadline.After(o.Created) {
					t.Fatalf("order %+v", o)
				}
				return
			}
			if !errors.Is(err, ErrBadOrder) {
				t.Fatalf("got %v, want ErrBadOrder", err)
			}
		})
	}
}

// TestReportFinal: a member is done for now when complete, when it failed
// with no retry left, or for a lasting reason; a member that retries after
// a hiccup is not.
func TestReportFinal(t *testing.T) {
	later := time.Now().Add(time.Minute)
	for _, c := range []struct {
		r    Report
		want bool
	}{
		{Report{State: Pending}, false},
		{Report{State: Pulling}, false},
		{Report{State: Complete}, true},
		{Report{State: Failed}, true},
		{Report{State: Failed, RetryAt: later}, false},
		{Report{State: Failed, RetryAt: later, Lasting: true}, true},
	} {
		if got := c.r.Final(); got != c.want {
			t.Errorf("%+v: Final() = %v, want %v", c.r, got, c.want)
		}
	}
}

// TestLastingFailures: the command stops waiting for a device whose image
// is unknown or unusable, and waits for one whose upstream, peers or disk
// failed it for now.
func TestLastingFailures(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("manifest app:v9: %w", node.ErrImageUnknown), true},
		{node.ErrNoPlatform, true},
		{fmt.Errorf("manifest app@sha256:12: %w", blobstore.ErrInvalidManifest), true},
		{errors.New("something new"), true},
		{fmt.Errorf("manifest app:v1: %w: timeout", node.ErrUpstream), false},
		{fmt.Errorf("blob app@sha256:34: no piece arrived for 30s: %w", blobstore.ErrNotFound), false},
		{fmt.Errorf("ingest write: %w", blobstore.ErrNoSpace), false},
		{fmt.Errorf("pull: %w", context.DeadlineExceeded), false},
	} {
		if got := lasting(c.err); got != c.want {
			t.Errorf("lasting(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
