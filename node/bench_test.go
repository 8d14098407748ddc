package node_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/registryapi"
)

// BenchmarkPeerPull: a client GETs a blob through node B's registry API
// while B fetches it from holder A's data plane (cold every iteration),
// verifies and stores it. IMGMESH_BENCH_SIZE sets the blob size (default
// 256 MiB).
func BenchmarkPeerPull(b *testing.B) {
	size := int64(256 << 20)
	if v, err := strconv.ParseInt(os.Getenv("IMGMESH_BENCH_SIZE"), 10, 64); err == nil {
		size = v
	}
	ctx := context.Background()
	mesh := p2p.NewMemoryNetwork()
	storeA, err := blobstore.Open(b.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer storeA.Close()
	w, _ := storeA.NewWriter(ctx)
	dg := digest.SHA256.Digester()
	if _, err := io.CopyN(io.MultiWriter(w, dg.Hash()), rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	d := dg.Digest()
	if _, err := w.Commit(ctx, size, d); err != nil {
		b.Fatal(err)
	}
	// A is a node too: its data plane answers piece-state polls.
	var handlerA http.Handler
	planeA := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handlerA.ServeHTTP(w, r) }))
	defer planeA.Close()
	routerA := mesh.NewRouter("a", planeA.URL)
	na := node.New(node.Options{Store: storeA, Router: routerA, Peers: dataplane.NewClient(dataplane.ClientOptions{})})
	defer na.Close()
	handlerA = dataplane.NewServer(dataplane.ServerOptions{Store: storeA, Swarm: na})
	if err := routerA.Advertise(ctx, d.String()); err != nil {
		b.Fatal(err)
	}
	peers := dataplane.NewClient(dataplane.ClientOptions{})
	client := &http.Client{}

	b.SetBytes(size)
	var cpu, wall time.Duration // of the timed part: how busy the two nodes and the client kept the machine
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		storeB, err := blobstore.Open(b.TempDir(), slog.New(slog.DiscardHandler))
		if err != nil {
			b.Fatal(err)
		}
		nb := node.New(node.Options{Store: storeB, Router: mesh.NewRouter("b"+strconv.Itoa(i), ""), Peers: peers})
		api := httptest.NewServer(registryapi.New(registryapi.Options{Source: nb, Store: nb.Store()}))
		b.StartTimer()
		cpu0, wall0 := cpuTime(b), time.Now()
		resp, err := client.Get(api.URL + "/v2/team/app/blobs/" + d.String())
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("read %d of %d: %v (status %s)", n, size, err, resp.Status)
		}
		b.StopTimer()
		cpu, wall = cpu+cpuTime(b)-cpu0, wall+time.Since(wall0)
		api.Close()
		nb.Close()
		storeB.Close()
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
	b.ReportMetric(cpu.Seconds()/(float64(size)*float64(b.N)/1e9), "core-s/GB")
}

// cpuTime is the CPU time this process has used, user and system.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
