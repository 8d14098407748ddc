package main

import (
	"strings"
	"syscall"
	"testing"
)

func TestQuotaConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "quota.yaml", "max_disk: 2GiB\ndisk_high_watermark: 95%\n")
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	fsSize := float64(st.Blocks) * float64(st.Bsize)
	for _, tc := range []struct {
		name          string
		env           map[string]string
		args          []string
		wantQuota     bool
		max, high, lo int64
		wantErr       string
	}{
		{name: "no quota by default"},
		{name: "zero is none", args: []string{"--max-disk", "0"}},
		{name: "decimal units", args: []string{"--max-disk", "20GB"}, wantQuota: true, max: 20e9, high: 18e9, lo: 16e9},
		{name: "binary units and watermarks", args: []string{"--max-disk", "512MiB", "--disk-high-watermark", "50%", "--disk-low-watermark", "25"},
			wantQuota: true, max: 512 << 20, high: 256 << 20, lo: 128 << 20},
		{name: "env", env: map[string]string{"IMGMESH_MAX_DISK": "1000", "IMGMESH_DISK_LOW_WATERMARK": "10%"}, wantQuota: true, max: 1000, high: 900, lo: 100},
		{name: "yaml", env: map[string]string{"IMGMESH_CONFIG": file}, wantQuota: true, max: 2 << 30, high: 2040109465, lo: 1717986918},
		{name: "flag over yaml", env: map[string]string{"IMGMESH_CONFIG": file}, args: []string{"--max-disk", "1MB"}, wantQuota: true, max: 1e6, high: 950000, lo: 800000},
		{name: "percent of filesystem", args: []string{"--max-disk", "50%"}, wantQuota: true, max: int64(fsSize * 0.5)},
		{name: "bad size", args: []string{"--max-disk", "lots"}, wantErr: `max disk: "lots" is not a size`},
		{name: "negative", args: []string{"--max-disk", "-5GB"}, wantErr: "must not be negative"},
		{name: "too many percent", args: []string{"--max-disk", "150%"}, wantErr: "at most 100%"},
		{name: "low above high", args: []string{"--max-disk", "1GB", "--disk-low-watermark", "95%"}, wantErr: "must be below the high watermark"},
		{name: "bad watermark", env: map[string]string{"IMGMESH_DISK_HIGH_WATERMARK": "most"}, wantErr: `disk high watermark "most"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServe(t, tc.env, append([]string{"--data-dir", dir}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			q, ok, err := cfg.quota(cfg.DataDir)
			if err != nil || ok != tc.wantQuota {
				t.Fatalf("quota = %+v, %v, %v; want a quota: %v", q, ok, err, tc.wantQuota)
			}
			if !ok {
				return
			}
			if tc.high == 0 { // percent of the filesystem: default watermarks
				tc.high, tc.lo = int64(float64(tc.max)*0.9), int64(float64(tc.max)*0.8)
			}
			if q.Max != tc.max || q.High != tc.high || q.Low != tc.lo {
				t.Errorf("quota = %+v; want max %d, high %d, low %d", q, tc.max, tc.high, tc.lo)
			}
		})
	}
}
