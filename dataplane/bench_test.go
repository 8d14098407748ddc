package dataplane

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/pnet"
	"github.com/libp2p/go-libp2p/p2p/transport/tcp"
	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/fleetkey"
)

// BenchmarkPeerTransfer moves one blob (256 MiB; IMGMESH_BENCH_SIZE, e.g.
// "1GiB", changes it) from a peer on loopback with the fleet key on, and
// reports GB/s (and CPU seconds per GB, sender and receiver together) for:
// the data plane with the receiver verifying sha256 (VerifyReader), the same
// without verification, sha256 alone (the hashing ceiling), a raw TCP
// copy of the file (sendfile, no HTTP) and a libp2p stream over TCP with the
// fleet's PSK.
func BenchmarkPeerTransfer(b *testing.B) {
	size := int64(256 << 20)
	if s := os.Getenv("IMGMESH_BENCH_SIZE"); s != "" {
		n, err := humanize.ParseBytes(s)
		if err != nil {
			b.Fatalf("IMGMESH_BENCH_SIZE: %v", err)
		}
		size = int64(n)
	}
	fk, err := fleetkey.Generate()
	if err != nil {
		b.Fatal(err)
	}
	f := newFixture(b, fk.Derive(fleetkey.DataPlane))
	d := f.putRandom(b, size)
	c := f.client(b, fk.Derive(fleetkey.DataPlane))
	buf := make([]byte, 1<<20)

	run := func(name string, fetch func() (int64, error)) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			cpu0 := cpuTime(b)
			for b.Loop() {
				n, err := fetch()
				if err != nil || n != size {
					b.Fatalf("moved %d of %d bytes: %v", n, size, err)
				}
			}
			gb := float64(size) * float64(b.N) / 1e9
			b.ReportMetric(gb/b.Elapsed().Seconds(), "GB/s")
			// CPU of this process (sender and receiver both), per GB: a
			// figure less at the mercy of other load on the machine.
			b.ReportMetric((cpuTime(b)-cpu0).Seconds()/gb, "cpu-s/GB")
		})
	}
	run("dataplane-verified", func() (int64, error) {
		rc, total, err := c.Blob(context.Background(), f.srv.URL, d, 0)
		if err != nil {
			return 0, err
		}
		defer rc.Close()
		return readAll(VerifyReader(rc, d, total), buf)
	})
	run("dataplane-unverified", func() (int64, error) {
		rc, _, err := c.Blob(context.Background(), f.srv.URL, d, 0)
		if err != nil {
			return 0, err
		}
		defer rc.Close()
		return readAll(rc, buf)
	})
	run("sha256-only", func() (int64, error) {
		h := sha256.New()
		var n int64
		for n < size {
			k := min(int64(len(buf)), size-n)
			h.Write(buf[:k])
			n += k
		}
		return n, nil
	})
	tcpAddr := f.serveRawTCP(b, d)
	run("tcp-raw", func() (int64, error) {
		conn, err := net.Dial("tcp", tcpAddr)
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		return readAll(conn, buf)
	})
	h1, h2 := f.libp2pPair(b, fk, d)
	run("libp2p-psk", func() (int64, error) {
		s, err := h1.NewStream(context.Background(), h2, benchProtocol)
		if err != nil {
			return 0, err
		}
		defer s.Close()
		return readAll(s, buf)
	})
}

// cpuTime is the user plus system CPU time of the process so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readAll reads r to EOF through buf and counts the bytes (io.Discard's
// ReadFrom would read in 8 KiB steps).
func readAll(r io.Reader, buf []byte) (int64, error) {
	var total int64
	for {
		n, err := r.Read(buf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// putRandom commits size pseudo-random bytes without holding them in memory.
func (f *fixture) putRandom(b *testing.B, size int64) digest.Digest {
	w, err := f.files.NewWriter(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	src := io.LimitReader(rand.NewChaCha8([32]byte{1}), size)
	if _, err := io.CopyBuffer(io.MultiWriter(w, h), src, make([]byte, 1<<20)); err != nil {
		w.Cancel()
		b.Fatal(err)
	}
	d := digest.NewDigest(digest.SHA256, h)
	if _, err := w.Commit(context.Background(), size, d); err != nil {
		b.Fatal(err)
	}
	return d
}

// serveRawTCP sends blob d to every connection on a loopback listener
// (io.Copy from the file: sendfile) and returns the address.
func (f *fixture) serveRawTCP(b *testing.B, d digest.Digest) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			if blob, err := f.files.Open(context.Background(), d); err == nil {
				_, _ = io.Copy(conn, blob)
				blob.Close()
			}
			conn.Close()
		}
	}()
	b.Cleanup(func() { l.Close(); <-done })
	return l.Addr().String()
}

const benchProtocol = "/imgmesh/bench/blob/1"

// libp2pPair starts two libp2p hosts on 127.0.0.1 TCP with the fleet PSK;
// the second sends blob d on every benchProtocol stream. It returns the
// first host and the second's ID, connected.
func (f *fixture) libp2pPair(b *testing.B, fk fleetkey.Key, d digest.Digest) (host.Host, peer.ID) {
	psk, err := pnet.DecodeV1PSK(bytes.NewReader(fk.PSK()))
	if err != nil {
		b.Fatal(err)
	}
	newHost := func() host.Host {
		h, err := libp2p.New(
			libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"),
			libp2p.Transport(tcp.NewTCPTransport),
			libp2p.PrivateNetwork(psk),
			libp2p.DisableRelay(),
			libp2p.DisableMetrics(),
			libp2p.ResourceManager(&network.NullResourceManager{}),
		)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { h.Close() })
		return h
	}
	h1, h2 := newHost(), newHost()
	h2.SetStreamHandler(benchProtocol, func(s network.Stream) {
		defer s.Close()
		blob, err := f.files.Open(context.Background(), d)
		if err != nil {
			s.Reset()
			return
		}
		defer blob.Close()
		if _, err := io.CopyBuffer(s, struct{ io.Reader }{blob}, make([]byte, 1<<20)); err != nil {
			s.Reset()
		}
	})
	if err := h1.Connect(context.Background(), peer.AddrInfo{ID: h2.ID(), Addrs: h2.Addrs()}); err != nil {
		b.Fatal(err)
	}
	return h1, h2.ID()
}
