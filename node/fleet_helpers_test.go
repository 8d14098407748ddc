package node_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/internal/testlog"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/upstream"
)

// member is one node of an in-process fleet: real file store, real data
// plane over HTTP, in-memory content routing.
type member struct {
	id      string
	n       *node.Node
	store   blobstore.Store
	plane   *httptest.Server
	cut     atomic.Int64 // !=0: the data plane dies after sending this many more body bytes
	corrupt atomic.Bool  // the data plane flips the first byte of every blob body write
	// lateUntil (unix ns): piece-map polls are held until then (a member
	// too loaded to answer).
	lateUntil atomic.Int64
	// slowFetch (ns): a request to fetch for the fleet is carried out at
	// once, but answered this much later, and so are the asker's polls
	// meanwhile (lateFor: asking node → until when).
	slowFetch atomic.Int64
	lateFor   sync.Map
	// downUntil (unix ns): the data plane answers 502 until then (a member
	// restarting, or a hiccup of the network).
	downUntil atomic.Int64
	reg       *prometheus.Registry
}

// newFleet starts size nodes sharing one MemoryNetwork; o (may be nil) is
// every node's upstream. Without gossip membership each node fetches from
// upstream itself what no holder has.
func newFleet(t *testing.T, o *origin, size int) []*member {
	t.Helper()
	return startFleet(t, o, size, false)
}

// newRankedFleet is newFleet with a membership list: the member ranked
// first for a blob fetches it from upstream for everyone.
func newRankedFleet(t *testing.T, o *origin, size int, tune ...func(*node.Options)) []*member {
	t.Helper()
	return startFleet(t, o, size, true, tune...)
}

func startFleet(t *testing.T, o *origin, size int, ranked bool, tune ...func(*node.Options)) []*member {
	t.Helper()
	net := p2p.NewMemoryNetwork()
	var fleet []*member
	members := &staticMembers{}
	log := testLogger(t)
	for i := range size {
		m := &member{id: string(rune('a' + i))}
		store, err := blobstore.Open(t.TempDir(), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		id := m.id
		peers := dataplane.NewClient(dataplane.ClientOptions{NodeID: id}) // seeds tell members apart by it
		t.Cleanup(peers.CloseIdleConnections)
		opts := node.Options{Store: store, Peers: peers, LookupTimeout: time.Second, IdleTimeout: 5 * time.Second, Logger: log.With("node", id)}
		if o != nil {
			up, err := upstream.New(upstream.Options{Registries: []upstream.Registry{{Name: ns, URL: o.srv.URL}}, Restrict: true})
			if err != nil {
				t.Fatal(err)
			}
			opts.Upstream = up
		}
		var plane http.Handler
		m.plane = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if m.cut.Load() != 0 {
				w = &cutter{ResponseWriter: w, left: &m.cut}
			}
			if m.corrupt.Load() {
				w = &flipper{ResponseWriter: w}
			}
			if until := time.Unix(0, m.lateUntil.Load()); strings.HasPrefix(r.URL.Path, dataplane.PiecesPath) && time.Now().Before(until) {
				time.Sleep(time.Until(until))
			}
			if time.Now().Before(time.Unix(0, m.downUntil.Load())) {
				http.Error(w, "down", http.StatusBadGateway)
				return
			}
			late := time.Duration(m.slowFetch.Load())
			asker := r.Header.Get("Imgmesh-Node")
			if late > 0 && strings.HasPrefix(r.URL.Path, dataplane.FetchPath) {
				m.lateFor.Store(asker, time.Now().Add(late)) // its polls are late too
			}
			if until, ok := m.lateFor.Load(asker); ok && strings.HasPrefix(r.URL.Path, dataplane.PiecesPath) {
				time.Sleep(time.Until(until.(time.Time)))
			}
			plane.ServeHTTP(w, r)
			if late > 0 && strings.HasPrefix(r.URL.Path, dataplane.FetchPath) {
				time.Sleep(late) // the answer leaves when the handler returns
			}
		}))
		opts.Router = net.NewRouter(id, m.plane.URL)
		if ranked {
			opts.Members = members.of(id)
		}
		m.reg = prometheus.NewRegistry()
		opts.Registerer = m.reg
		members.all = append(members.all, node.Member{ID: id, DataURL: m.plane.URL})
		for _, f := range tune {
			f(&opts)
		}
		m.n = node.New(opts)
		m.store = m.n.Store()
		plane = dataplane.NewServer(dataplane.ServerOptions{Store: m.store, Swarm: m.n, Registerer: m.reg})
		t.Cleanup(func() {
			m.plane.Close()
			m.n.Close()
			store.Close()
		})
		fleet = append(fleet, m)
	}
	return fleet
}

// fetched reads the node's imgmesh_fetched_bytes_total for one source.
func (m *member) fetched(t *testing.T, source string) float64 {
	t.Helper()
	return m.sum(t, "imgmesh_fetched_bytes_total", func(l *dto.LabelPair) bool {
		return l.GetName() == "source" && l.GetValue() == source
	})
}

// counter sums the member's counter name over all its labels.
func (m *member) counter(t *testing.T, name string) float64 {
	t.Helper()
	return m.sum(t, name, nil)
}

// sum adds the values of counter name whose labels include one that
// matches (any, if match is nil).
func (m *member) sum(t *testing.T, name string, match func(*dto.LabelPair) bool) float64 {
	t.Helper()
	fams, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, mt := range f.GetMetric() {
			if match == nil || slices.ContainsFunc(mt.GetLabel(), match) {
				sum += mt.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// staticMembers is a fleet whose membership does not change.
type staticMembers struct{ all []node.Member }

type memberView struct {
	s    *staticMembers
	self string
}

func (s *staticMembers) of(self string) node.Members { return memberView{s, self} }

func (v memberView) Members() []node.Member {
	out := make([]node.Member, len(v.s.all))
	for i, m := range v.s.all {
		m.Self = m.ID == v.self
		out[i] = m
	}
	return out
}

// cutter lets a data plane send its remaining byte budget, then drops
// every connection: a peer dying mid-transfer.
type cutter struct {
	http.ResponseWriter
	left *atomic.Int64
}

func (c *cutter) Write(p []byte) (int, error) {
	left := c.left.Add(-int64(len(p))) + int64(len(p))
	if left < int64(len(p)) {
		c.left.Store(-1)
		if left > 0 {
			c.ResponseWriter.Write(p[:left])
		}
		panic(http.ErrAbortHandler)
	}
	return c.ResponseWriter.Write(p)
}

// flipper corrupts blob bodies: a holder whose copy went bad, or a peer
// that lies.
type flipper struct{ http.ResponseWriter }

func (f *flipper) Write(p []byte) (int, error) {
	if len(p) > 0 && f.Header().Get("Content-Type") == "application/octet-stream" {
		p = bytes.Clone(p)
		p[0] ^= 0xff
	}
	return f.ResponseWriter.Write(p)
}

// waitAdvertised polls until a lookup from m finds a holder of key.
func waitAdvertised(t *testing.T, n *node.Node, name node.Name, d digest.Digest) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := n.Blob(context.Background(), name, d, true); err == nil && c.Source == "peer" {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no holder of %s announced itself within 5s", d)
}

// waitStored waits for d to be committed in store (a reader has the last
// byte once the digest matched; fsync and rename may still run).
func waitStored(t *testing.T, store blobstore.Store, d digest.Digest) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err = store.Stat(t.Context(), d); err == nil {
			return
		}
	}
	t.Fatalf("%s not stored: %v", d, err)
}

func nodesOf(fleet []*member) []*node.Node {
	var out []*node.Node
	for _, m := range fleet {
		out = append(out, m.n)
	}
	return out
}

// testLogger logs to stderr at debug level when IMGMESH_TEST_DEBUG is set.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("IMGMESH_TEST_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if testlog.KeepDir() == "" {
		return slog.New(slog.DiscardHandler)
	}
	// Debug logs of a fleet kept for a test that fails: a flaky swarm
	// test is told apart by what its nodes did.
	var buf testlog.Buffer
	t.Cleanup(func() {
		if t.Failed() {
			testlog.Keep(t, "", []byte(buf.String()))
		}
	})
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
