// Command imgmesh runs a node of the imgmesh LAN image distribution mesh and
// writes the mirror configuration of the container runtimes that use it.
//
// This package holds the CLI, the configuration and the wiring only.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// version is set at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the CLI with args and returns the process exit code.
func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{
		ctx:       context.Background(),
		stdout:    stdout,
		stderr:    stderr,
		lookupEnv: os.LookupEnv,
		now:       time.Now,
	}
	return c.run(args)
}

// cli carries what the commands need from their environment, so tests run
// the whole CLI in-process with their own env, clock and context.
type cli struct {
	ctx       context.Context // cancelled = shut down (tests); serve adds SIGINT/SIGTERM
	stdout    io.Writer
	stderr    io.Writer
	lookupEnv func(string) (string, bool)
	now       func() time.Time
}

// usageError is a mistake in the command line itself (unknown flag, missing
// argument), as opposed to a bad value or a runtime failure.
type usageError struct {
	cmd string // command path, for the help hint
	err error
}

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func (c *cli) run(args []string) int {
	root := c.rootCmd()
	root.SetArgs(args)
	err := root.ExecuteContext(c.ctx)
	if err == nil {
		return 0
	}
	msg := oneLine(err.Error())
	var ue usageError
	switch {
	case errors.As(err, &ue):
		msg += fmt.Sprintf(" (see '%s --help')", ue.cmd)
	case strings.HasPrefix(msg, "unknown command"):
		msg += " (see 'imgmesh --help')"
	}
	fmt.Fprintf(c.stderr, "imgmesh: %s\n", msg)
	return 1
}

func (c *cli) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "imgmesh",
		Short:         "imgmesh: a peer-to-peer LAN mirror for OCI images",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without a subcommand, print help rather than fail.
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	root.SetVersionTemplate("imgmesh {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{cmd: cmd.CommandPath(), err: err}
	})
	root.CompletionOptions.DisableDefaultCmd = true
	root.AddCommand(c.serveCmd(), c.configCmd(), c.versionCmd(), c.keygenCmd(), c.peersCmd(), c.statusCmd(), c.prefetchCmd(), c.benchCmd(), c.importCmd(), c.exportCmd(), c.imagesCmd())
	return root
}

func (c *cli) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "imgmesh %s\n", version)
			return err
		},
	}
}

func (c *cli) serveCmd() *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run a node: an OCI registry on --listen that pulls through from upstream",
		Long: `Run a node: an OCI distribution-spec registry that serves from its own store
and fetches what it lacks from the upstream registries, streaming to the client.

Settings come from flags, then IMGMESH_* environment variables, then the
--config YAML file, then the defaults.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd.Flags(), &f, c.lookupEnv)
			if err != nil {
				return err
			}
			return c.serve(cmd.Context(), cfg)
		},
	}
	f.register(cmd.Flags())
	return cmd
}

// oneLine folds a (possibly multi-line) error message onto one line.
func oneLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := range lines {
		lines[i] = strings.TrimSpace(lines[i])
	}
	return strings.Join(lines, " ")
}
