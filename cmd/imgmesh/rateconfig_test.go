package main

import (
	"strings"
	"testing"
)

func TestRateConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "rates.yaml", "max_upload_rate: 100Mbit\nmax_download_rate: 12500000\n")
	for _, tc := range []struct {
		name             string
		env              map[string]string
		args             []string
		wantUp, wantDown int64
		wantErr          string
	}{
		{name: "unlimited by default"},
		{name: "flags", args: []string{"--max-upload-rate", "10MB/s", "--max-download-rate", "1Gbps"}, wantUp: 10_000_000, wantDown: 125_000_000},
		{name: "env", env: map[string]string{"IMGMESH_MAX_UPLOAD_RATE": "8MiB/s", "IMGMESH_MAX_DOWNLOAD_RATE": "500k"}, wantUp: 8 << 20, wantDown: 500_000},
		{name: "yaml text and number", env: map[string]string{"IMGMESH_CONFIG": file}, wantUp: 12_500_000, wantDown: 12_500_000},
		{name: "env over yaml", env: map[string]string{"IMGMESH_CONFIG": file, "IMGMESH_MAX_UPLOAD_RATE": "1MB"}, wantUp: 1_000_000, wantDown: 12_500_000},
		{name: "flag 0 over yaml", env: map[string]string{"IMGMESH_CONFIG": file}, args: []string{"--max-download-rate", "0"}, wantUp: 12_500_000},
		{name: "bad flag", args: []string{"--max-upload-rate", "fast"}, wantErr: `max upload rate: invalid rate "fast"`},
		{name: "negative env", env: map[string]string{"IMGMESH_MAX_DOWNLOAD_RATE": "-1MB"}, wantErr: "max download rate: invalid rate \"-1MB\": must not be negative"},
		{name: "ambiguous unit", args: []string{"--max-download-rate", "100Mb"}, wantErr: "ambiguous"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parseServe(t, tc.env, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MaxUploadRate != tc.wantUp || cfg.MaxDownloadRate != tc.wantDown {
				t.Fatalf("upload %d download %d, want %d and %d", cfg.MaxUploadRate, cfg.MaxDownloadRate, tc.wantUp, tc.wantDown)
			}
		})
	}
}
