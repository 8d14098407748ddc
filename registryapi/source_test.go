package registryapi

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// storeSource is a local-only Source over a store, as the node behaves
// without upstream: blobs visible only where linked, tags from the index.
type storeSource struct{ store blobstore.Store }

var _ Source = storeSource{}

func (s storeSource) Manifest(ctx context.Context, name node.Name, ref string, head bool) (node.Manifest, error) {
	d := digest.Digest(ref)
	if !strings.Contains(ref, ":") {
		var err error
		if d, err = s.store.Resolve(ctx, name.Repo, ref); err != nil {
			return node.Manifest{}, err
		}
	}
	rec, err := s.store.GetManifest(ctx, name.Repo, d)
	if err != nil {
		return node.Manifest{}, err
	}
	m := node.Manifest{Digest: d, MediaType: rec.MediaType, Size: rec.Size}
	if head {
		return m, nil
	}
	b, err := s.store.Open(ctx, d)
	if err != nil {
		return node.Manifest{}, err
	}
	defer b.Close()
	if m.Body, err = io.ReadAll(b); err != nil {
		return node.Manifest{}, err
	}
	return m, nil
}

func (s storeSource) Blob(ctx context.Context, name node.Name, d digest.Digest, head bool) (node.Content, error) {
	if err := blobstore.CheckDigest(d); err != nil {
		return node.Content{}, err
	}
	ok, err := s.store.Linked(ctx, name.Repo, d)
	if err != nil {
		return node.Content{}, err
	}
	if !ok {
		return node.Content{}, fmt.Errorf("blob %s@%s: %w", name.Repo, d, blobstore.ErrNotFound)
	}
	info, err := s.store.Stat(ctx, d)
	if err != nil {
		return node.Content{}, err
	}
	c := node.Content{Digest: d, Size: info.Size, Source: "local"}
	if head {
		return c, nil
	}
	if c.Body, err = s.store.Open(ctx, d); err != nil {
		return node.Content{}, err
	}
	return c, nil
}

func (s storeSource) Tags(ctx context.Context, name node.Name) ([]string, error) {
	tags, err := s.store.Tags(ctx, name.Repo)
	if err != nil {
		return nil, err
	}
	if len(tags) == 0 {
		return nil, fmt.Errorf("repository %s: %w", name.Repo, blobstore.ErrNotFound)
	}
	return tags, nil
}

// testServer is New over an in-memory store behind a real HTTP server.
type testServer struct {
	*httptest.Server
	api   *Server
	store *blobstore.Memory
	reg   *prometheus.Registry
}

// newTestServer starts a server; edit adjusts the options (Source defaults
// to storeSource over the store).
func newTestServer(t *testing.T, edit func(*Options)) *testServer {
	t.Helper()
	store := blobstore.NewMemory()
	reg := prometheus.NewRegistry()
	opts := Options{Source: storeSource{store}, Store: store, Registerer: reg}
	if edit != nil {
		edit(&opts)
	}
	api := New(opts).(*Server)
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		srv.Close()
		_ = api.Close()
	})
	return &testServer{Server: srv, api: api, store: store, reg: reg}
}
