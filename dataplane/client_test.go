package dataplane

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

func TestClientBlob(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, nil)
	blob := randomBytes(t, 3<<20+5)
	d := f.put(t, blob)
	for _, tc := range []struct {
		name   string
		offset int64
	}{
		{name: "whole", offset: 0},
		{name: "resume", offset: 1<<20 + 3},
		{name: "last byte", offset: int64(len(blob)) - 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, total, err := c.Blob(context.Background(), f.srv.URL, d, tc.offset)
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			got, err := io.ReadAll(VerifyReader(rc, d, -1))
			if tc.offset == 0 && err != nil {
				t.Fatalf("verified read: %v", err)
			}
			if tc.offset > 0 {
				// A suffix cannot verify against the whole blob's digest.
				if !errors.Is(err, blobstore.ErrDigestMismatch) {
					t.Fatalf("suffix verified as the whole blob: %v", err)
				}
			}
			if total != int64(len(blob)) || !bytes.Equal(got, blob[tc.offset:]) {
				t.Fatalf("got %d bytes (total %d), want blob[%d:] of %d", len(got), total, tc.offset, len(blob))
			}
		})
	}
	t.Run("stat", func(t *testing.T) {
		if n, err := c.Stat(context.Background(), f.srv.URL, d); err != nil || n != int64(len(blob)) {
			t.Fatalf("Stat = %d, %v; want %d", n, err, len(blob))
		}
	})
	t.Run("not held", func(t *testing.T) {
		_, _, err := c.Blob(context.Background(), f.srv.URL, digest.FromString("absent"), 0)
		if !errors.Is(err, ErrNotHeld) {
			t.Fatalf("got %v, want ErrNotHeld", err)
		}
		if _, err := c.Stat(context.Background(), f.srv.URL, digest.FromString("absent")); !errors.Is(err, ErrNotHeld) {
			t.Fatalf("Stat: got %v, want ErrNotHeld", err)
		}
	})
	t.Run("offset past the end", func(t *testing.T) {
		_, _, err := c.Blob(context.Background(), f.srv.URL, d, int64(len(blob))+1)
		if !errors.Is(err, ErrPeer) {
			t.Fatalf("got %v, want ErrPeer", err)
		}
	})
	t.Run("bad digest never sent", func(t *testing.T) {
		before := f.store.total()
		_, _, err := c.Blob(context.Background(), f.srv.URL, "sha256:abc", 0)
		if !errors.Is(err, digest.ErrDigestInvalidLength) || f.store.total() != before {
			t.Fatalf("got %v, store calls %d→%d", err, before, f.store.total())
		}
	})
}

func TestClientTag(t *testing.T) {
	f := newFixture(t, nil)
	c := f.client(t, nil)
	ctx := context.Background()
	d := f.put(t, []byte(`{"schemaVersion":2,"n":1}`))
	if err := f.files.Tag(ctx, "localhost:5000/team/app", "v1.2", d); err != nil {
		t.Fatal(err)
	}
	got, err := c.Tag(ctx, f.srv.URL, "localhost:5000/team/app", "v1.2")
	if err != nil || got != d {
		t.Fatalf("Tag = %s, %v; want %s", got, err, d)
	}
	if _, err := c.Tag(ctx, f.srv.URL, "localhost:5000/team/app", "v2"); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("unknown tag: got %v, want ErrNotHeld", err)
	}
	if _, err := c.Tag(ctx, f.srv.URL, "team/app", "bad tag"); err == nil || errors.Is(err, ErrPeer) {
		t.Fatalf("invalid tag: got %v, want a local validation error", err)
	}
}

// TestClientPeerFailures: an unreachable or failing peer is ErrPeer, fast.
func TestClientPeerFailures(t *testing.T) {
	blob := randomBytes(t, 1<<20)
	d := digest.FromBytes(blob)
	broken := digest.FromString("the peer's disk is on fire")
	mux := http.NewServeMux()
	mux.HandleFunc("/blobs/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/blobs/" + broken.String():
			http.Error(w, "disk on fire", http.StatusInternalServerError)
		default: // promise the whole blob, send half, cut the connection
			w.Header().Set("Content-Length", "1048576")
			w.Write(blob[:len(blob)/2])
			panic(http.ErrAbortHandler)
		}
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	c := NewClient(ClientOptions{})
	defer c.CloseIdleConnections()
	ctx := context.Background()

	t.Run("5xx", func(t *testing.T) {
		if _, err := c.Stat(ctx, srv.URL, broken); !errors.Is(err, ErrPeer) {
			t.Fatalf("Stat: got %v, want ErrPeer", err)
		}
		if _, _, err := c.Blob(ctx, srv.URL, broken, 0); !errors.Is(err, ErrPeer) {
			t.Fatalf("Blob: got %v, want ErrPeer", err)
		}
	})
	t.Run("cut mid-body", func(t *testing.T) {
		rc, total, err := c.Blob(ctx, srv.URL, d, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer rc.Close()
		n, err := io.Copy(io.Discard, VerifyReader(rc, d, total))
		if !errors.Is(err, ErrPeer) || n >= total {
			t.Fatalf("read %d of %d, err %v; want ErrPeer before the end", n, total, err)
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		start := time.Now()
		_, _, err = c.Blob(ctx, "http://"+addr, d, 0)
		if !errors.Is(err, ErrPeer) {
			t.Fatalf("got %v, want ErrPeer", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Fatalf("dead peer cost %v", el)
		}
	})
}
