package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/imgmesh/imgmesh/bench/internal/benchkit"
	"github.com/imgmesh/imgmesh/fleetkey"
)

// transferRepo is the repository the big blob is pushed to.
const transferRepo = "bench/transfer"

// transfer measures (a): per run, interleaved, a GET of the blob from node
// A's store (local hit), a cold GET through a fresh node B that fetches it
// from A over the data plane and verifies it while streaming, and a raw
// libp2p stream with the fleet PSK whose receiver hashes the bytes.
func transfer(ctx context.Context, e *env, res *Results) error {
	e.step("writing a %s random blob", benchkit.SizeString(e.cfg.size))
	b, err := benchkit.MakeBlob(filepath.Join(e.tmp, "blob"), e.cfg.size)
	if err != nil {
		return err
	}
	defer os.Remove(b.Path)
	xfer := benchkit.TransferTimeout(b.Size)
	client := benchkit.NewClient()
	defer client.CloseIdleConnections()

	nodes, err := startNodes(ctx, e.ps, []nodeOpts{e.opts("xfer-a", "none", "500ms")})
	if err != nil {
		return err
	}
	a := nodes[0]
	defer a.p.Stop(5 * time.Second)
	e.step("pushing the blob to node A")
	f, err := os.Open(b.Path)
	if err != nil {
		return err
	}
	err = push(ctx, client, a.base, transferRepo, b.Digest, f, b.Size, xfer)
	f.Close()
	if err != nil {
		return fmt.Errorf("%w (node A log: %s)", err, a.p.Tail())
	}
	localURL := blobURL(a.base, transferRepo, b.Digest, "")
	if _, err := benchkit.Get(ctx, client, localURL, b.Size, b.Digest, true, xfer); err != nil {
		return fmt.Errorf("verify node A: %w", err)
	}

	h1, h2, err := libp2pPair(ctx, e.key, b.Path)
	if err != nil {
		return err
	}
	defer h1.Close()
	defer h2.Close()

	t := &Transfer{Goal: goalTransfer}
	for run := range e.cfg.runs {
		d, err := benchkit.Get(ctx, client, localURL, b.Size, b.Digest, false, xfer)
		if err != nil {
			return fmt.Errorf("local hit run %d: %w", run+1, err)
		}
		t.LocalGBps = append(t.LocalGBps, benchkit.Gbps(b.Size, d))

		c, peak, err := coldPeer(ctx, e, a, b, run)
		if err != nil {
			return fmt.Errorf("peer transfer run %d: %w", run+1, err)
		}
		gb := benchkit.Gbps(b.Size, c.All)
		t.PeerGBps, t.PeakRSS = append(t.PeerGBps, gb), append(t.PeakRSS, peak)
		t.StreamGBps = append(t.StreamGBps, benchkit.Gbps(benchkit.TailMark(b.Size), c.BeforeTail))
		t.TailMS = append(t.TailMS, ms(c.All-c.BeforeTail))

		nd, err := nodeToNode(ctx, e, a, b, run)
		if err != nil {
			return fmt.Errorf("node-to-node run %d: %w", run+1, err)
		}
		t.NodeGBps = append(t.NodeGBps, benchkit.Gbps(b.Size, nd))

		d, err = libp2pStream(ctx, h1, h2.ID(), b, xfer)
		if err != nil {
			return fmt.Errorf("libp2p stream run %d: %w", run+1, err)
		}
		t.Libp2pGBps = append(t.Libp2pGBps, benchkit.Gbps(b.Size, d))
		d, err = writeNewFile(e.tmp, b.Size)
		if err != nil {
			return fmt.Errorf("new file write run %d: %w", run+1, err)
		}
		t.WriteGBps = append(t.WriteGBps, benchkit.Gbps(b.Size, d))
		e.step("transfer run %d/%d: peer %.2f GB/s, local %.2f GB/s, libp2p %.2f GB/s, new file %.2f GB/s",
			run+1, e.cfg.runs, gb, t.LocalGBps[run], t.Libp2pGBps[run], t.WriteGBps[run])
	}
	t.PeerMedian, t.LocalMedian, t.Libp2pMedian = benchkit.Median(t.PeerGBps), benchkit.Median(t.LocalGBps), benchkit.Median(t.Libp2pGBps)
	t.StreamMedian, t.TailMedian = benchkit.Median(t.StreamGBps), benchkit.Median(t.TailMS)
	t.NodeMedian = benchkit.Median(t.NodeGBps)
	t.WriteMedian = benchkit.Median(t.WriteGBps)
	t.RatioToGoal = t.PeerMedian / goalTransfer
	t.Met = t.PeerMedian >= goalTransfer
	res.Transfer = t
	return nil
}

// coldPeer starts a fresh node B in A's fleet, waits until B can see the
// blob (HEAD 200: a lookup and a peer stat, no bytes), then times one GET
// through B, which fetches from A, verifies and streams. It returns the
// timing and B's VmHWM after; the first run also checks what B then serves.
func coldPeer(ctx context.Context, e *env, a *node, b benchkit.Blob, run int) (benchkit.Timing, int64, error) {
	nb, url, stop, err := freshB(ctx, e, a, b, fmt.Sprintf("xfer-b%d", run+1))
	if err != nil {
		return benchkit.Timing{}, 0, err
	}
	defer stop()
	hc := benchkit.NewClient()
	defer hc.CloseIdleConnections()
	xfer := benchkit.TransferTimeout(b.Size)
	t, err := benchkit.GetSplit(ctx, hc, url, b.Size, b.Digest, false, xfer)
	if err != nil {
		return benchkit.Timing{}, 0, fmt.Errorf("%w (node B log: %s)", err, nb.p.Tail())
	}
	m, err := benchkit.ReadMemory(nb.p.PID())
	if err != nil {
		return benchkit.Timing{}, 0, err
	}
	if run == 0 {
		e.step("verifying what node B serves after the transfer")
		if _, err := benchkit.Get(ctx, hc, url, b.Size, b.Digest, true, xfer); err != nil {
			return benchkit.Timing{}, 0, fmt.Errorf("node B after the transfer: %w", err)
		}
	}
	return t, m.Peak, nil
}

// freshB starts a new node B in A's fleet and waits until it can see the
// blob (HEAD 200: a lookup and a peer stat, no bytes moved).
func freshB(ctx context.Context, e *env, a *node, b benchkit.Blob, name string) (*node, string, func(), error) {
	o := e.opts(name, "none", "500ms")
	o.join = []string{a.gossip}
	nodes, err := startNodes(ctx, e.ps, []nodeOpts{o})
	if err != nil {
		return nil, "", nil, err
	}
	nb := nodes[0]
	stop := func() {
		nb.p.Stop(5 * time.Second)
		os.RemoveAll(o.dir)
	}
	url := blobURL(nb.base, transferRepo, b.Digest, "")
	err = waitFleet(ctx, []*node{nb}, 2)
	if err == nil {
		err = benchkit.Poll(ctx, nb.p, fleetTimeout, "seeing the blob", func(ctx context.Context) (bool, error) {
			code, size, err := head(ctx, url)
			return err == nil && code == 200 && size == b.Size, nil
		})
	}
	if err != nil {
		stop()
		return nil, "", nil, err
	}
	return nb, url, stop, nil
}

// nodeToNode times node B fetching the blob from A into its store with no
// client reading along: a 1-byte range request starts B's download, then
// B's status is polled until it has received every byte from A (verified
// as they arrive; the last byte only counts once the digest matched).
func nodeToNode(ctx context.Context, e *env, a *node, b benchkit.Blob, run int) (time.Duration, error) {
	nb, url, stop, err := freshB(ctx, e, a, b, fmt.Sprintf("xfer-n%d", run+1))
	if err != nil {
		return 0, err
	}
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, benchkit.TransferTimeout(b.Size))
	defer cancel()
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Range", "bytes=0-0")
	resp, err := ctl.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	for {
		var st struct {
			StoreBlobs int64 `json:"store_blobs"`
		}
		if err := getJSON(ctx, nb.base+"/api/v1/status", &st); err != nil {
			return 0, err
		}
		if st.StoreBlobs >= 1 { // verified, fsynced and committed
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("node B did not store the blob: %w (log: %s)", ctx.Err(), nb.p.Tail())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

const benchProtocol = "/imgmesh/bench/blob/1"

// libp2pPair starts two libp2p hosts on 127.0.0.1 TCP with the fleet PSK;
// the second sends the file at path on every benchProtocol stream. The
// first is connected to the second.
func libp2pPair(ctx context.Context, k fleetkey.Key, path string) (host.Host, host.Host, error) {
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(k.PSK()))
	if err != nil {
		return nil, nil, fmt.Errorf("psk: %w", err)
	}
	newHost := func() (host.Host, error) {
		return libp2p.New(
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.PrivateNetwork(psk),
			libp2p.DisableRelay(),
			libp2p.DisableMetrics(),
			libp2p.ResourceManager(&network.NullResourceManager{}),
		)
	}
	h1, err := newHost()
	if err != nil {
		return nil, nil, fmt.Errorf("libp2p host: %w", err)
	}
	h2, err := newHost()
	if err != nil {
		h1.Close()
		return nil, nil, fmt.Errorf("libp2p host: %w", err)
	}
	h2.SetStreamHandler(benchProtocol, func(s network.Stream) {
		defer s.Close()
		f, err := os.Open(path)
		if err != nil {
			s.Reset()
			return
		}
		defer f.Close()
		if _, err := io.CopyBuffer(s, struct{ io.Reader }{f}, make([]byte, 1<<20)); err != nil {
			s.Reset()
		}
	})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := h1.Connect(cctx, peer.AddrInfo{ID: h2.ID(), Addrs: h2.Addrs()}); err != nil {
		h1.Close()
		h2.Close()
		return nil, nil, fmt.Errorf("libp2p connect: %w", err)
	}
	return h1, h2, nil
}

// libp2pStream reads the blob over one new stream, hashing it, and checks
// size and digest.
func libp2pStream(ctx context.Context, h host.Host, to peer.ID, b benchkit.Blob, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	s, err := h.NewStream(ctx, to, benchProtocol)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = s.SetReadDeadline(dl)
	}
	hs := sha256.New()
	n, err := benchkit.ReadAll(s, hs, 0, nil)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("after %d bytes: %w", n, err)
	}
	if n != b.Size {
		return 0, fmt.Errorf("%w: %d bytes, want %d", benchkit.ErrShort, n, b.Size)
	}
	if got := "sha256:" + hex.EncodeToString(hs.Sum(nil)); got != b.Digest {
		return 0, fmt.Errorf("stream hashes to %s, want %s", got, b.Digest)
	}
	return d, nil
}

// writeNewFile times writing size bytes from one reused 1 MiB buffer into
// a new file in dir (into the page cache; the file is removed after): what
// any download costs before a byte is hashed or sent. In a VM whose host
// takes freed guest memory back, pages the guest has not touched lately
// fault in on first write, and this is where it shows.
func writeNewFile(dir string, size int64) (time.Duration, error) {
	f, err := os.CreateTemp(dir, "write-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	start := time.Now()
	for left := size; left > 0; {
		k, err := f.Write(buf[:min(left, int64(len(buf)))])
		if err != nil {
			return 0, err
		}
		left -= int64(k)
	}
	return time.Since(start), nil
}
