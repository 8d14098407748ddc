package main

import "github.com/spf13/pflag"

// QuotaConfig: Disk quota (issue 5): --max-disk and its watermarks.
// It is inlined in Config: the YAML keys sit beside the others.
type QuotaConfig struct{}

func (c *QuotaConfig) register(fs *pflag.FlagSet) {}

func (c *QuotaConfig) applyFlags(fs *pflag.FlagSet, set *QuotaConfig) {}

func (c *QuotaConfig) applyEnv(lookupEnv func(string) (string, bool)) error { return nil }

func (c *QuotaConfig) validate() error { return nil }
