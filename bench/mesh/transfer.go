package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"

	"github.com/imgmesh/imgmesh/fleetkey"
)

// transferRepo is the repository the big blob is pushed to.
const transferRepo = "bench/transfer"

// blob is the test blob on disk.
type blob struct {
	path   string
	size   int64
	digest string // sha256:…
}

// makeBlob writes size random bytes (ChaCha8: fast, incompressible) to path.
func makeBlob(path string, size int64) (blob, error) {
	f, err := os.Create(path)
	if err != nil {
		return blob{}, err
	}
	var seed [32]byte
	_, _ = crand.Read(seed[:]) // never fails
	src := rand.NewChaCha8(seed)
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for left := size; left > 0; {
		n := min(int64(len(buf)), left)
		_, _ = src.Read(buf[:n]) // never fails
		h.Write(buf[:n])
		if _, err := f.Write(buf[:n]); err != nil {
			f.Close()
			return blob{}, fmt.Errorf("write blob: %w", err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return blob{}, fmt.Errorf("write blob: %w", err)
	}
	return blob{path: path, size: size, digest: "sha256:" + hex.EncodeToString(h.Sum(nil))}, nil
}

// transfer measures (a): per run, interleaved, a GET of the blob from node
// A's store (local hit), a cold GET through a fresh node B that fetches it
// from A over the data plane and verifies it while streaming, and a raw
// libp2p stream with the fleet PSK whose receiver hashes the bytes.
func transfer(ctx context.Context, e *env, res *Results) error {
	e.step("writing a %s random blob", sizeString(e.cfg.size))
	b, err := makeBlob(filepath.Join(e.tmp, "blob"), e.cfg.size)
	if err != nil {
		return err
	}
	defer os.Remove(b.path)
	xfer := transferTimeout(b.size)
	client := newClient()
	defer client.CloseIdleConnections()

	nodes, err := startNodes(ctx, e.ps, []nodeOpts{e.opts("xfer-a", "none", "500ms")})
	if err != nil {
		return err
	}
	a := nodes[0]
	defer a.p.stop(5 * time.Second)
	e.step("pushing the blob to node A")
	f, err := os.Open(b.path)
	if err != nil {
		return err
	}
	err = push(ctx, client, a.base, transferRepo, b.digest, f, b.size, xfer)
	f.Close()
	if err != nil {
		return fmt.Errorf("%w (node A log: %s)", err, a.p.tail())
	}
	localURL := blobURL(a.base, transferRepo, b.digest, "")
	if _, err := get(ctx, client, localURL, b.size, b.digest, true, xfer); err != nil {
		return fmt.Errorf("verify node A: %w", err)
	}

	h1, h2, err := libp2pPair(ctx, e.key, b.path)
	if err != nil {
		return err
	}
	defer h1.Close()
	defer h2.Close()

	t := &Transfer{Goal: goalTransfer}
	for run := range e.cfg.runs {
		d, err := get(ctx, client, localURL, b.size, b.digest, false, xfer)
		if err != nil {
			return fmt.Errorf("local hit run %d: %w", run+1, err)
		}
		t.LocalGBps = append(t.LocalGBps, gbps(b.size, d))

		c, peak, err := coldPeer(ctx, e, a, b, run)
		if err != nil {
			return fmt.Errorf("peer transfer run %d: %w", run+1, err)
		}
		gb := gbps(b.size, c.all)
		t.PeerGBps, t.PeakRSS = append(t.PeerGBps, gb), append(t.PeakRSS, peak)
		t.StreamGBps = append(t.StreamGBps, gbps(tailMark(b.size), c.beforeTail))
		t.TailMS = append(t.TailMS, ms(c.all-c.beforeTail))

		d, err = libp2pStream(ctx, h1, h2.ID(), b, xfer)
		if err != nil {
			return fmt.Errorf("libp2p stream run %d: %w", run+1, err)
		}
		t.Libp2pGBps = append(t.Libp2pGBps, gbps(b.size, d))
		e.step("transfer run %d/%d: peer %.2f GB/s, local %.2f GB/s, libp2p %.2f GB/s",
			run+1, e.cfg.runs, gb, t.LocalGBps[run], t.Libp2pGBps[run])
	}
	t.PeerMedian, t.LocalMedian, t.Libp2pMedian = median(t.PeerGBps), median(t.LocalGBps), median(t.Libp2pGBps)
	t.StreamMedian, t.TailMedian = median(t.StreamGBps), median(t.TailMS)
	t.RatioToGoal = t.PeerMedian / goalTransfer
	t.Met = t.PeerMedian >= goalTransfer
	res.Transfer = t
	return nil
}

// coldPeer starts a fresh node B in A's fleet, waits until B can see the
// blob (HEAD 200: a lookup and a peer stat, no bytes), then times one GET
// through B, which fetches from A, verifies and streams. It returns the
// timing and B's VmHWM after; the first run also checks what B then serves.
func coldPeer(ctx context.Context, e *env, a *node, b blob, run int) (timing, int64, error) {
	o := e.opts(fmt.Sprintf("xfer-b%d", run+1), "none", "500ms")
	o.join = []string{a.gossip}
	nodes, err := startNodes(ctx, e.ps, []nodeOpts{o})
	if err != nil {
		return timing{}, 0, err
	}
	nb := nodes[0]
	defer func() {
		nb.p.stop(5 * time.Second)
		os.RemoveAll(o.dir)
	}()
	if err := waitFleet(ctx, []*node{nb}, 2); err != nil {
		return timing{}, 0, err
	}
	url := blobURL(nb.base, transferRepo, b.digest, "")
	err = poll(ctx, nb.p, fleetTimeout, "seeing the blob", func(ctx context.Context) (bool, error) {
		code, size, err := head(ctx, url)
		return err == nil && code == 200 && size == b.size, nil
	})
	if err != nil {
		return timing{}, 0, err
	}
	hc := newClient()
	defer hc.CloseIdleConnections()
	xfer := transferTimeout(b.size)
	t, err := getSplit(ctx, hc, url, b.size, b.digest, false, xfer)
	if err != nil {
		return timing{}, 0, fmt.Errorf("%w (node B log: %s)", err, nb.p.tail())
	}
	m, err := readMemory(nb.p.pid())
	if err != nil {
		return timing{}, 0, err
	}
	if run == 0 {
		e.step("verifying what node B serves after the transfer")
		if _, err := get(ctx, hc, url, b.size, b.digest, true, xfer); err != nil {
			return timing{}, 0, fmt.Errorf("node B after the transfer: %w", err)
		}
	}
	return t, m.Peak, nil
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
func libp2pStream(ctx context.Context, h host.Host, to peer.ID, b blob, timeout time.Duration) (time.Duration, error) {
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
	n, err := readAll(s, hs, 0, nil)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("after %d bytes: %w", n, err)
	}
	if n != b.size {
		return 0, fmt.Errorf("%w: %d bytes, want %d", errShort, n, b.size)
	}
	if got := "sha256:" + hex.EncodeToString(hs.Sum(nil)); got != b.digest {
		return 0, fmt.Errorf("stream hashes to %s, want %s", got, b.digest)
	}
	return d, nil
}
