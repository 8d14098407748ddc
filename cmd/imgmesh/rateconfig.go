package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/imgmesh/imgmesh/internal/ratelimit"
)

// RateConfig is the node's transfer caps (issue 4), so a device's production
// traffic keeps its share of the link. It is inlined in Config: the YAML keys
// sit beside the others.
//
// The flags, the environment and the YAML file give the caps as text for
// humans ("100Mbit", "10MiB/s", "0" = unlimited; see ratelimit.Parse);
// validate parses the text that won into the byte rates.
type RateConfig struct {
	// MaxUploadRate caps what the node serves to its peers, in bytes/s;
	// 0 = unlimited.
	MaxUploadRate int64 `yaml:"-"`
	// MaxDownloadRate caps what the node fetches from peers and upstream, in
	// bytes/s; 0 = unlimited.
	MaxDownloadRate int64 `yaml:"-"`

	MaxUploadRateText   string `yaml:"max_upload_rate"`
	MaxDownloadRateText string `yaml:"max_download_rate"`
}

func (c *RateConfig) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.MaxUploadRateText, "max-upload-rate", "0", "cap on what this node serves to peers, e.g. 50Mbit, 10MB/s, 8MiB/s; 0 = unlimited (env IMGMESH_MAX_UPLOAD_RATE)")
	fs.StringVar(&c.MaxDownloadRateText, "max-download-rate", "0", "cap on what this node fetches from peers and upstream, same units; 0 = unlimited (env IMGMESH_MAX_DOWNLOAD_RATE)")
}

func (c *RateConfig) applyFlags(fs *pflag.FlagSet, set *RateConfig) {
	if fs.Changed("max-upload-rate") {
		c.MaxUploadRateText = set.MaxUploadRateText
	}
	if fs.Changed("max-download-rate") {
		c.MaxDownloadRateText = set.MaxDownloadRateText
	}
}

func (c *RateConfig) applyEnv(lookupEnv func(string) (string, bool)) error {
	if v, ok := lookupEnv(envPrefix + "MAX_UPLOAD_RATE"); ok && v != "" {
		c.MaxUploadRateText = v
	}
	if v, ok := lookupEnv(envPrefix + "MAX_DOWNLOAD_RATE"); ok && v != "" {
		c.MaxDownloadRateText = v
	}
	return nil
}

// validate parses the rate texts into MaxUploadRate and MaxDownloadRate. An
// empty text leaves the byte rate as it is (0 unless set in code).
func (c *RateConfig) validate() error {
	for _, r := range []struct {
		name string
		text string
		dst  *int64
	}{
		{"max upload rate", c.MaxUploadRateText, &c.MaxUploadRate},
		{"max download rate", c.MaxDownloadRateText, &c.MaxDownloadRate},
	} {
		if r.text == "" {
			continue
		}
		v, err := ratelimit.Parse(r.text)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		*r.dst = v
	}
	return nil
}

// rateCap returns the shared limiter for a cap in bytes/s (nil: no cap; its
// methods pass bytes through).
func rateCap(bytesPerSec int64) *ratelimit.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return ratelimit.New(bytesPerSec)
}
