package p2p_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imgmesh/imgmesh/p2p"
)

// The netns test runs this test binary inside each namespace with probeEnv
// set; TestMain then runs runProbe instead of the tests.
const (
	probeEnv       = "IMGMESH_P2P_PROBE"
	probeAdvertise = "IMGMESH_P2P_PROBE_ADVERTISE" // key to advertise at start
	probeLookup    = "IMGMESH_P2P_PROBE_LOOKUP"    // key to look up until found
	probePeers     = "IMGMESH_P2P_PROBE_PEERS"     // peers to wait for
	probeDataPort  = "IMGMESH_P2P_PROBE_DATAPORT"
)

// runProbe is a node with mDNS on and no bootstrap. It prints "READY id",
// then "PEERS id@url..." once it has Meta from the wanted number of peers,
// and after that "FOUND id url" once a lookup finds a holder. It stops when its standard
// input closes.
func runProbe() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	port, _ := strconv.Atoi(os.Getenv(probeDataPort))
	wantPeers, _ := strconv.Atoi(os.Getenv(probePeers))
	h, err := p2p.New(context.Background(), p2p.Options{
		ListenAddrs: []string{"/ip4/0.0.0.0/tcp/4001"},
		MDNS:        true,
		Meta:        p2p.Meta{DataPort: port},
		Logger:      log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 2
	}
	defer h.Close()
	out := bufio.NewWriter(os.Stdout)
	say := func(f string, a ...any) {
		fmt.Fprintf(out, f+"\n", a...)
		out.Flush()
	}
	say("READY %s", h.ID())
	if k := os.Getenv(probeAdvertise); k != "" {
		// Before any peer is known: the key must reach peers as they join.
		if err := h.Advertise(context.Background(), k); err != nil {
			fmt.Fprintln(os.Stderr, "probe: advertise:", err)
			return 2
		}
	}
	quit := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(quit)
	}()
	lookup := os.Getenv(probeLookup)
	peersSaid := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-quit:
			return 0
		case <-tick.C:
		}
		if !peersSaid {
			var ids []string
			for _, pi := range h.Peers() {
				if pi.Connected && pi.HasMeta {
					ids = append(ids, pi.ID+"@"+pi.DataURL())
				}
			}
			if len(ids) >= wantPeers {
				say("PEERS %s", strings.Join(ids, " "))
				peersSaid = true
			}
		}
		if peersSaid && lookup != "" { // in this order: the test reads the lines in order
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			hs, err := h.Lookup(ctx, lookup, 5)
			cancel()
			if err == nil && len(hs) > 0 {
				say("FOUND %s %s", hs[0].ID, hs[0].DataURL)
				lookup = ""
			}
		}
	}
}
