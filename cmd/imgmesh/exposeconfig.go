package main

import "github.com/spf13/pflag"

// ExposeConfig: Exposed mode (issue 5): TLS and basic auth on the registry API.
// It is inlined in Config: the YAML keys sit beside the others.
type ExposeConfig struct{}

func (c *ExposeConfig) register(fs *pflag.FlagSet) {}

func (c *ExposeConfig) applyFlags(fs *pflag.FlagSet, set *ExposeConfig) {}

func (c *ExposeConfig) applyEnv(lookupEnv func(string) (string, bool)) error { return nil }

func (c *ExposeConfig) validate() error { return nil }
