package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/dataplane"
	"github.com/imgmesh/imgmesh/fleetkey"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/registryapi"
	"github.com/imgmesh/imgmesh/upstream"
)

const (
	// maxManifestSize is the largest manifest the node accepts (4 MiB).
	maxManifestSize = 4 << 20
	// shutdownTimeout bounds waiting for requests in flight on SIGINT/SIGTERM.
	shutdownTimeout = 10 * time.Second
)

// serve wires store → upstream → node → registry API and serves it on
// cfg.Listen until ctx ends or SIGINT/SIGTERM arrives.
func (c *cli) serve(ctx context.Context, cfg Config) (err error) {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := cfg.newLogger(c.stderr)
	// What libraries print with the standard log package (net/http's
	// "Unsolicited response received on idle HTTP channel") goes through
	// the same handler, so --log-format json stays JSON.
	slog.SetDefault(log.With("component", "stdlog"))
	slog.SetLogLoggerLevel(slog.LevelWarn) // such lines are warnings: kept at --log-level warn

	dockerConfig, err := c.dockerConfig(cfg)
	if err != nil {
		return err
	}
	tlsCfg, err := cfg.serverTLS() // exposed mode: files read before listening
	if err != nil {
		return err
	}
	withAuth, err := cfg.authWrap(log, cfg.Listen)
	if err != nil {
		return err
	}
	upstreamRoots, err := cfg.upstreamRoots()
	if err != nil {
		return err
	}
	if cfg.FleetKey != "" && !cfg.Mesh { // with the mesh, startMesh reads it
		if _, err := fleetkey.Load(cfg.FleetKey); err != nil {
			return err
		}
	}
	// Listen before opening the store: a busy port fails fast and leaves
	// the data directory alone.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()

	store, err := blobstore.Open(cfg.DataDir, log)
	if err != nil {
		return fmt.Errorf("open store %s: %w", cfg.DataDir, err)
	}
	defer func() {
		if cerr := store.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	gc, err := cfg.QuotaConfig.newGC(cfg.DataDir, store, reg, log) // nil: no quota
	if err != nil {
		return err
	}
	opts := node.Options{Store: watchStore(gc, store), Logger: log, TagTimeout: cfg.TagTimeout, Registerer: reg}
	if cfg.NodeName == "" {
		if cfg.NodeName, err = keptNodeName(cfg.DataDir); err != nil {
			return err
		}
	}
	pf, err := newPrefetch(cfg, log) // before the mesh: gossip may bring orders at once
	if err != nil {
		return err
	}
	var m *mesh
	if cfg.Mesh {
		if m, err = startMesh(ctx, cfg, log, reg, prefetchChannel(pf)); err != nil {
			return err
		}
		defer m.close()
		opts.Router, opts.Peers, opts.LookupTimeout, opts.Members = m.host, m.peers, cfg.LookupTimeout, m
		opts.ReadAhead = cfg.ReadAhead
	}
	if len(cfg.Upstreams) > 0 {
		up, err := upstream.New(upstream.Options{
			Registries:   cfg.registries(),
			Restrict:     cfg.RestrictUpstreams,
			DockerConfig: dockerConfig,
			RootCAs:      upstreamRoots,
			Logger:       log,
			UserAgent:    "imgmesh/" + version,
		})
		if err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
		defer up.Close()
		opts.Upstream = up
	}
	if cfg.MaxDownloadRate > 0 {
		opts.Throttle = rateCap(cfg.MaxDownloadRate).Reader
	}
	n := node.New(opts)
	defer n.Close()
	defer startGC(ctx, gc, n.Store(), n.Busy)() // evicts through the announcing store
	if m != nil {
		dopts := dataplane.ServerOptions{Store: n.Store(), Key: m.dataKey(), Logger: log, Registerer: reg, Swarm: n}
		if cfg.MaxUploadRate > 0 {
			dopts.Throttle = rateCap(cfg.MaxUploadRate).Writer
		}
		m.serveData(dataplane.NewServer(dopts))
	} else if cfg.MaxUploadRate > 0 {
		log.Warn("--max-upload-rate has no effect without a fleet (--mesh=false): it caps what the node serves to peers")
	}
	if err := startPrefetch(pf, cfg, n, store, m); err != nil {
		return err
	}
	defer func() {
		if err := pf.Close(); err != nil {
			log.Warn("prefetch state not written", "err", err)
		}
	}()

	api := registryapi.New(registryapi.Options{
		Source: n, Store: n.Store(), Logger: log,
		Registerer: reg, Gatherer: reg, MaxManifestSize: maxManifestSize,
		MaxUploads: maxUploads(log),
	})
	if c, ok := api.(io.Closer); ok {
		defer c.Close() // cancels upload sessions still open
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", admin.Handler(admin.Options{
		Status: func(ctx context.Context) (admin.Status, error) {
			st := admin.Status{Version: version, FleetSize: 1}
			if m != nil {
				st.PeerID, st.P2PAddrs, st.FleetSize = m.host.ID(), m.host.Addrs(), m.size()
				if m.fleet != nil {
					st.NodeName = m.fleet.LocalName()
				}
			}
			var err error
			st.StoreBytes, st.StoreBlobs, err = store.Usage(ctx)
			return st, err
		},
		Peers: func() []admin.Peer {
			if m == nil {
				return nil
			}
			return m.members()
		},
		Gatherer: reg,
	}))
	images := admin.ImagesHandler(admin.ImagesOptions{Store: n.Store(), DefaultRegistry: cfg.defaultRegistry(), Busy: n.Busy, Logger: log})
	mux.Handle(admin.ImagesPath, images)
	mux.Handle(admin.ImagesPath+"/", images)
	prefetchAPI := admin.PrefetchHandler(pf, log)
	mux.Handle(admin.PrefetchPath, prefetchAPI)
	mux.Handle(admin.PrefetchPath+"/", prefetchAPI)
	mux.Handle("/", api)
	srv := &http.Server{
		Handler:           withAuth(mux),
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("listening", "addr", ln.Addr().String(), "data_dir", cfg.DataDir,
		"upstreams", len(cfg.Upstreams), "version", version, "tls", tlsCfg != nil, "auth", cfg.Htpasswd != "")

	errc := make(chan error, 1)
	go func() {
		if tlsCfg != nil {
			errc <- srv.ServeTLS(ln, "", "") // certificates from srv.TLSConfig
			return
		}
		errc <- srv.Serve(ln)
	}()
	select {
	case err := <-errc:
		_ = srv.Close() // the listener failed: stop handlers before the deferred closes
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// A second SIGINT/SIGTERM now ends the process at once: a stop that
	// hangs can be cut short by its operator.
	stop()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown: closing connections still open", "err", err)
		_ = srv.Close()
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// dockerConfig returns the credentials file to hand to upstream: the
// default path is skipped when it does not exist (anonymous pulls), a path
// the user named must exist.
func (c *cli) dockerConfig(cfg Config) (string, error) {
	if cfg.DockerConfig == "" {
		return "", nil
	}
	_, err := os.Stat(cfg.DockerConfig)
	switch {
	case err == nil:
		return cfg.DockerConfig, nil
	case errors.Is(err, fs.ErrNotExist) && cfg.DockerConfig == defaultDockerConfig(c.lookupEnv):
		return "", nil
	default:
		return "", fmt.Errorf("docker config: %w", err)
	}
}

// registries converts the configured upstreams for the upstream package.
func (c Config) registries() []upstream.Registry {
	rs := make([]upstream.Registry, len(c.Upstreams))
	for i, u := range c.Upstreams {
		rs[i] = upstream.Registry{Name: u.Name, URL: strings.TrimRight(u.URL, "/")}
	}
	return rs
}

// maxUploads bounds open upload sessions (each holds a file) to a quarter of
// the process's file limit, at most 1024: past it a push gets 429, where
// running out of files would fail every request, the store included.
func maxUploads(log *slog.Logger) int {
	const most = 1024
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur/4 >= most {
		return most
	}
	n := max(int(lim.Cur/4), 16)
	log.Info("upload sessions bounded by the file limit", "max_uploads", n, "nofile", lim.Cur)
	return n
}
