// Package admin is the node's small operator API on the registry listener:
// GET /api/v1/status (this node) and GET /api/v1/peers (the fleet), as JSON
// for `imgmesh status` and `imgmesh peers`.
package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Paths served by Handler.
const (
	StatusPath = "/api/v1/status"
	PeersPath  = "/api/v1/peers"
)

// Status describes this node.
type Status struct {
	Version    string   `json:"version"`
	NodeName   string   `json:"node_name,omitempty"`
	PeerID     string   `json:"peer_id,omitempty"`
	P2PAddrs   []string `json:"p2p_addrs,omitempty"`
	FleetSize  int      `json:"fleet_size"`
	StoreBytes int64    `json:"store_bytes"`
	StoreBlobs int64    `json:"store_blobs"`
	// ServedBytes are blob bytes served to clients by where they came from
	// (local, peer, upstream); FetchedBytes what the node fetched by source.
	ServedBytes  map[string]float64 `json:"served_bytes"`
	FetchedBytes map[string]float64 `json:"fetched_bytes"`
}

// Peer is one fleet member as `imgmesh peers` shows it.
type Peer struct {
	Name     string            `json:"name"`
	State    string            `json:"state"`
	Gossip   string            `json:"gossip"`
	PeerID   string            `json:"peer_id,omitempty"`
	P2PAddrs []string          `json:"p2p_addrs,omitempty"`
	Registry string            `json:"registry,omitempty"`
	Version  string            `json:"version,omitempty"`
	Labels   map[string]string `json:"labels,omitempty"`
	LastSeen time.Time         `json:"last_seen"`
	Self     bool              `json:"self,omitempty"`
}

// Options wires the handler to the node.
type Options struct {
	// Status fills what only the wiring knows (identity, fleet, store).
	Status func(ctx context.Context) (Status, error)
	// Peers lists the fleet; nil: a lone node.
	Peers func() []Peer
	// Gatherer is read for the byte counters.
	Gatherer prometheus.Gatherer
}

// Handler serves StatusPath and PeersPath.
func Handler(o Options) http.Handler {
	mux := http.NewServeMux()
	noSuchPath(mux, "/api/v1/", "") // the node mounts this handler there
	handle(mux, http.MethodGet, StatusPath, func(w http.ResponseWriter, r *http.Request) {
		st, err := o.Status(r.Context())
		if err != nil {
			writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
			return
		}
		st.ServedBytes = counters(o.Gatherer, "imgmesh_registry_blob_bytes_served_total", "source")
		st.FetchedBytes = counters(o.Gatherer, "imgmesh_fetched_bytes_total", "source")
		writeJSON(w, st)
	})
	handle(mux, http.MethodGet, PeersPath, func(w http.ResponseWriter, r *http.Request) {
		peers := []Peer{}
		if o.Peers != nil {
			peers = o.Peers()
		}
		writeJSON(w, peers)
	})
	return mux
}

// handle serves method (GET serves HEAD too) on path, and answers any other
// method there with 405 and the error JSON the rest of the API gives,
// rather than the mux's plain text.
func handle(mux *http.ServeMux, method, path string, h http.HandlerFunc) {
	mux.HandleFunc(method+" "+path, h)
	allow := method
	if method == http.MethodGet {
		allow += ", " + http.MethodHead
	}
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, CodeUnsupported, r.Method+" "+path+": want "+allow)
	})
}

// noSuchPath answers every path under prefix that no route takes with 404
// in the API's error JSON; hint, if set, says what would be found.
func noSuchPath(mux *http.ServeMux, prefix, hint string) {
	mux.HandleFunc(prefix, func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, CodeNotFound, r.URL.Path+": no such API"+hint)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// counters sums a counter family by one label.
func counters(g prometheus.Gatherer, name, label string) map[string]float64 {
	out := map[string]float64{}
	if g == nil {
		return out
	}
	fams, err := g.Gather()
	if err != nil {
		return out
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label {
					out[lp.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
