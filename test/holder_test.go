package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHolderKilledMidTransfer: a node fetching a large blob from a holder
// whose process dies mid-body finishes the pull with the right bytes,
// resuming at the offset it had reached: first from the other holder (the
// upstream down), then, with every holder dead, from the upstream.
//
// To kill at a known point, the holders are frozen (SIGSTOP) as soon as
// the client sees the response headers; the one serving the fetcher is
// found from the fetcher's open TCP connections, then SIGKILLed.
func TestHolderKilledMidTransfer(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 3*time.Minute)
	up := startUpstream(t)
	const repo, size = "test/big", 64 << 20
	layer, data := randomBlob(t, size)
	up.pushBlob(ctx, t, repo, layer)
	d := sha256Digest(data)
	ns := up.Host()

	nodes := startFleet(t, 4, meshOptions{upstream: []string{"--upstream", ns + "=" + up.URL(), "--restrict-upstreams"}})
	waitFleetSize(ctx, t, nodes, 4, 60*time.Second)
	a, b, c, dn := nodes[0], nodes[1], nodes[2], nodes[3]
	blobURL := func(n *meshNode) string { return n.url("/v2/" + repo + "/blobs/" + d + nsQuery(ns)) }
	for _, n := range []*meshNode{a, b} { // a from upstream, b from a
		if r := getHashed(ctx, n.client, blobURL(n)); r.err != nil || r.status != http.StatusOK || r.digest != d || r.size != size {
			t.Fatalf("pull through %s: status %d, %d bytes, digest %s, err %v", n.name, r.status, r.size, r.digest, r.err)
		}
	}
	if st := b.status(ctx, t); st.FetchedBytes["peer"] != size {
		t.Errorf("node2 fetched %v, want the blob from node1", st.FetchedBytes)
	}

	// 1. Holders a and b, fetcher c, upstream down: only the holder that
	// was not killed can deliver the rest.
	up.proxy.SetMode(modeDown503)
	sentBefore := map[*meshNode]float64{a: dataplaneSent(ctx, t, a), b: dataplaneSent(ctx, t, b)}
	p := beginFrozenPull(ctx, t, c, blobURL(c), a, b)
	serving := p.servingHolder(t, a, b)
	known := serving != nil
	if !known { // under heavy load the socket was not seen: kill a, whichever served
		t.Logf("could not tell which holder node3 was fetching from; killing %s", a.name)
		serving = a
	}
	survivor := a
	if serving == a {
		survivor = b
	}
	serving.kill(t)
	survivor.thaw(t)
	p.finish(t, d, size)
	if st := c.status(ctx, t); st.FetchedBytes["peer"] != size || st.FetchedBytes["upstream"] != 0 {
		t.Errorf("node3 fetched %v, want exactly the blob's %d bytes, all from peers (nothing fetched twice)", st.FetchedBytes, size)
	}
	if known {
		checkResumed(ctx, t, survivor, serving, sentBefore[survivor], size, p.atFreeze)
	}

	// 2. Holders survivor and c, fetcher dn, upstream back: every holder
	// dies mid-body, the upstream sends the rest as a range.
	up.proxy.SetMode(modeHonest)
	upBefore := up.proxy.Stats().BlobBytes[d]
	p = beginFrozenPull(ctx, t, dn, blobURL(dn), survivor, c)
	survivor.kill(t)
	c.kill(t)
	p.finish(t, d, size)
	st := dn.status(ctx, t)
	fromUp := up.proxy.Stats().BlobBytes[d] - upBefore
	if st.FetchedBytes["peer"]+st.FetchedBytes["upstream"] != size || st.FetchedBytes["upstream"] == 0 {
		t.Errorf("node4 fetched %v, want the blob's %d bytes once, the rest from upstream", st.FetchedBytes, size)
	}
	if fromUp <= 0 || fromUp >= size || float64(fromUp) != st.FetchedBytes["upstream"] {
		t.Errorf("upstream sent %d bytes of the blob to node4 (which counted %.0f), want the rest after offset %.0f", fromUp, st.FetchedBytes["upstream"], st.FetchedBytes["peer"])
	}
	t.Logf("every holder killed after node4 had %d bytes; upstream sent the remaining %d", p.atFreeze, fromUp)
}

// checkResumed: the surviving holder sent only the rest of the blob after
// the serving one died (a resumed range, not the whole blob again).
func checkResumed(ctx context.Context, t *testing.T, survivor, killed *meshNode, sentBefore float64, size, atFreeze int64) {
	t.Helper()
	var resumed float64
	poll(t, survivor.name+" data plane sent the rest", 10*time.Second, nil, func() error {
		if resumed = dataplaneSent(ctx, t, survivor) - sentBefore; resumed == 0 {
			return fmt.Errorf("%s sent nothing", survivor.name)
		}
		return nil
	})
	if resumed >= float64(size) {
		t.Errorf("%s sent %.0f bytes after %s died, want only the rest of the %d byte blob (a resumed range)", survivor.name, resumed, killed.name, size)
	}
	t.Logf("%s killed after node3 had %d bytes; %s sent the remaining %.0f", killed.name, atFreeze, survivor.name, resumed)
}

// frozenPull is a client's GET whose holders were frozen when the headers
// arrived.
type frozenPull struct {
	fetcher  *meshNode
	resp     *http.Response
	hash     hash.Hash
	read     int64
	atFreeze int64 // bytes the fetcher had from peers once they were frozen
}

// beginFrozenPull GETs url through fetcher, freezes holders as soon as the
// response headers arrive, and reads the first MiB (or what the fetcher
// had by then) of the body.
func beginFrozenPull(ctx context.Context, t *testing.T, fetcher *meshNode, url string, holders ...*meshNode) *frozenPull {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := fetcher.client.Do(req)
	for _, h := range holders {
		h.freeze(t)
	}
	if err != nil {
		t.Fatalf("GET through %s: %v", fetcher.name, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through %s: %s", fetcher.name, resp.Status)
	}
	p := &frozenPull{fetcher: fetcher, resp: resp, hash: sha256.New()}
	st := fetcher.status(ctx, t)
	if st.FetchedBytes["upstream"] != 0 || st.FetchedBytes["peer"] == 0 {
		t.Fatalf("%s is not fetching from a peer: fetched %v", fetcher.name, st.FetchedBytes)
	}
	p.atFreeze = int64(st.FetchedBytes["peer"])
	if p.atFreeze >= resp.ContentLength {
		t.Fatalf("%s had the whole blob before its holders were frozen; cannot kill them mid-transfer", fetcher.name)
	}
	first := min(1<<20, p.atFreeze-1) // the fetcher holds back the last byte until verified
	n, err := io.CopyN(p.hash, resp.Body, first)
	p.read += n
	if err != nil {
		t.Fatalf("read the first %d bytes through %s: %v", first, fetcher.name, err)
	}
	return p
}

// finish reads the rest of the body and checks the whole blob.
func (p *frozenPull) finish(t *testing.T, d string, size int64) {
	t.Helper()
	n, err := io.Copy(p.hash, p.resp.Body)
	p.read += n
	got := "sha256:" + hex.EncodeToString(p.hash.Sum(nil))
	if err != nil || p.read != size || got != d {
		t.Fatalf("pull through %s after the kill: %d bytes, digest %s, err %v; want %d bytes %s", p.fetcher.name, p.read, got, err, size, d)
	}
}

// servingHolder is the one of holders whose data plane the fetcher has an
// open connection to (a hedged second request is closed by the fetcher), or
// nil when that could not be seen within 10s.
func (p *frozenPull) servingHolder(t *testing.T, holders ...*meshNode) *meshNode {
	t.Helper()
	ports := map[int]*meshNode{}
	for _, h := range holders {
		_, port, err := net.SplitHostPort(h.dataAddr(t))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(port)
		ports[n] = h
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		conns, err := establishedTo(p.fetcher.proc.pid)
		if err != nil {
			t.Fatal(err)
		}
		var found []*meshNode
		for port := range conns {
			if h := ports[port]; h != nil {
				found = append(found, h)
			}
		}
		if len(found) == 1 {
			return found[0]
		}
	}
	return nil
}

// establishedTo returns the remote ports of pid's established TCP
// connections, read from /proc.
func establishedTo(pid int) (map[int]bool, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	out := map[int]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "01" || !inodes[f[9]] {
				continue
			}
			port, err := strconv.ParseUint(f[2][strings.LastIndexByte(f[2], ':')+1:], 16, 16)
			if err != nil {
				return nil, fmt.Errorf("/proc/%d/net/%s: %q: %w", pid, table, f[2], err)
			}
			out[int(port)] = true
		}
	}
	return out, nil
}

// dataplaneSent is the bytes the node's data plane has sent to peers.
func dataplaneSent(ctx context.Context, t *testing.T, n *meshNode) float64 {
	t.Helper()
	return sum(n.metrics(ctx, t, n.client), "imgmesh_dataplane_bytes_sent_total", nil)
}
