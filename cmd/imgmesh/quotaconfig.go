package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/imgmesh/imgmesh/blobstore"
)

// QuotaConfig is the disk quota (issue 5): --max-disk and its watermarks.
// It is inlined in Config: the YAML keys sit beside the others.
//
// MaxDisk is bytes with units ("20GB", "512MiB", "1073741824") or a
// percentage of the data directory's filesystem ("80%"); "" or "0" = no
// quota. The watermarks are percentages of MaxDisk: above the high one the
// node evicts least recently used unpinned content down to the low one.
type QuotaConfig struct {
	MaxDisk           string `yaml:"max_disk"`
	DiskHighWatermark string `yaml:"disk_high_watermark"` // "" = 90%
	DiskLowWatermark  string `yaml:"disk_low_watermark"`  // "" = 80%
}

const (
	defaultHighWatermark = "90%"
	defaultLowWatermark  = "80%"
)

func (c *QuotaConfig) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.MaxDisk, "max-disk", "", "disk quota of the store: bytes (20GB, 512MiB) or a percentage of the data dir's filesystem (80%); empty or 0 = none (env IMGMESH_MAX_DISK)")
	fs.StringVar(&c.DiskHighWatermark, "disk-high-watermark", defaultHighWatermark, "evict least recently used unpinned images when the store passes this share of --max-disk (env IMGMESH_DISK_HIGH_WATERMARK)")
	fs.StringVar(&c.DiskLowWatermark, "disk-low-watermark", defaultLowWatermark, "evict down to this share of --max-disk (env IMGMESH_DISK_LOW_WATERMARK)")
}

func (c *QuotaConfig) applyFlags(fs *pflag.FlagSet, set *QuotaConfig) {
	if fs.Changed("max-disk") {
		c.MaxDisk = set.MaxDisk
	}
	if fs.Changed("disk-high-watermark") {
		c.DiskHighWatermark = set.DiskHighWatermark
	}
	if fs.Changed("disk-low-watermark") {
		c.DiskLowWatermark = set.DiskLowWatermark
	}
}

func (c *QuotaConfig) applyEnv(lookupEnv func(string) (string, bool)) error {
	for key, dst := range map[string]*string{"MAX_DISK": &c.MaxDisk,
		"DISK_HIGH_WATERMARK": &c.DiskHighWatermark, "DISK_LOW_WATERMARK": &c.DiskLowWatermark} {
		if v, ok := lookupEnv(envPrefix + key); ok && v != "" {
			*dst = v
		}
	}
	return nil
}

func (c *QuotaConfig) validate() error {
	if _, _, err := parseDiskSize(c.MaxDisk); err != nil {
		return fmt.Errorf("max disk: %w", err)
	}
	high, low, err := c.watermarks()
	if err != nil {
		return err
	}
	if low >= high {
		return fmt.Errorf("disk low watermark %g%% must be below the high watermark %g%%", low, high)
	}
	return nil
}

// watermarks returns the high and low watermarks in percent.
func (c *QuotaConfig) watermarks() (high, low float64, err error) {
	h, l := c.DiskHighWatermark, c.DiskLowWatermark
	if h == "" {
		h = defaultHighWatermark
	}
	if l == "" {
		l = defaultLowWatermark
	}
	if high, err = parsePercent(h); err != nil || high <= 0 {
		return 0, 0, fmt.Errorf("disk high watermark %q: want a percentage above 0 and at most 100%%, like 90%%", h)
	}
	if low, err = parsePercent(l); err != nil {
		return 0, 0, fmt.Errorf("disk low watermark %q: want a percentage from 0 to 100%%, like 80%%", l)
	}
	return high, low, nil
}

// parsePercent parses "90%" or "90" (0..100).
func parsePercent(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(s), "%"), 64)
	if err != nil || v < 0 || v > 100 {
		return 0, fmt.Errorf("%q is not a percentage from 0 to 100", s)
	}
	return v, nil
}

// parseDiskSize parses --max-disk: bytes, or a percentage (pct true).
// "" and "0" are 0 (no quota).
func parseDiskSize(s string) (v float64, pct bool, err error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "" || s == "0":
		return 0, false, nil
	case strings.HasSuffix(s, "%"):
		p, err := parsePercent(s)
		if err != nil || p <= 0 {
			return 0, true, fmt.Errorf("%q: a percentage of the filesystem must be above 0%% and at most 100%%", s)
		}
		return p, true, nil
	}
	if strings.HasPrefix(s, "-") {
		return 0, false, fmt.Errorf("%q must not be negative", s)
	}
	b, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, false, fmt.Errorf("%q is not a size (like 20GB, 512MiB) or a percentage (like 80%%)", s)
	}
	return float64(b), false, nil
}

// quota resolves the configured quota for the store in dataDir (a
// percentage is of its filesystem's size). ok false: no quota.
func (c *QuotaConfig) quota(dataDir string) (q blobstore.Quota, ok bool, err error) {
	v, pct, err := parseDiskSize(c.MaxDisk)
	if err != nil || v == 0 {
		return q, false, err
	}
	max := int64(v)
	if pct {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dataDir, &st); err != nil {
			return q, false, fmt.Errorf("max disk %s: size of the filesystem of %s: %w", c.MaxDisk, dataDir, err)
		}
		max = int64(float64(st.Blocks) * float64(st.Bsize) * v / 100)
	}
	high, low, err := c.watermarks()
	if err != nil {
		return q, false, err
	}
	return blobstore.Quota{Max: max, High: int64(float64(max) * high / 100), Low: int64(float64(max) * low / 100)}, true, nil
}

// newGC returns the GC of the configured quota, nil when there is none,
// and registers the store's usage and eviction metrics on reg.
func (c *QuotaConfig) newGC(dataDir string, store blobstore.Store, reg prometheus.Registerer, log *slog.Logger) (*blobstore.GC, error) {
	q, ok, err := c.quota(dataDir)
	if err != nil {
		return nil, err
	}
	var gc *blobstore.GC
	if ok {
		gc = blobstore.NewGC(q, 0, log)
		log.Info("disk quota", "max_bytes", q.Max, "high_bytes", q.High, "low_bytes", q.Low)
	}
	stat := func(f func(blobstore.GCStats) int64) func() float64 {
		return func() float64 {
			if gc == nil {
				return 0
			}
			return float64(f(gc.Stats()))
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgmesh_store_bytes", Help: "Bytes of verified blobs in the store."},
			func() float64 {
				n, _, _ := store.Usage(context.Background())
				return float64(n)
			}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "imgmesh_store_quota_bytes", Help: "The store's disk quota (--max-disk); 0 = none."},
			func() float64 { return float64(q.Max) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "imgmesh_evictions_total", Help: "Blobs evicted to keep the store under its quota."},
			stat(func(s blobstore.GCStats) int64 { return s.Blobs })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "imgmesh_evicted_bytes_total", Help: "Bytes evicted to keep the store under its quota."},
			stat(func(s blobstore.GCStats) int64 { return s.Bytes })),
	)
	return gc, nil
}

// watchStore is store, whose commits wake gc (store itself without quota).
func watchStore(gc *blobstore.GC, store blobstore.Store) blobstore.Store {
	if gc == nil {
		return store
	}
	return gc.Watch(store)
}

// startGC runs gc until the returned stop is called; it deletes through
// store (the node's announcing store) and spares what busy reports.
func startGC(ctx context.Context, gc *blobstore.GC, store blobstore.Store, busy func(digest.Digest) bool) (stop func()) {
	if gc == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		gc.Run(ctx, store, busy)
	}()
	return func() {
		cancel()
		<-done
	}
}
