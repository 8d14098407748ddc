package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// defaultCertsDir is where containerd's CRI plugin usually reads hosts.toml
// files (its registry config_path).
const defaultCertsDir = "/etc/containerd/certs.d"

func (c *cli) configCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Write or print the mirror configuration of containerd, k3s or Docker",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(c.configContainerdCmd(), c.configK3sCmd(), c.configDockerCmd())
	return cmd
}

func (c *cli) configContainerdCmd() *cobra.Command {
	var (
		registries []string
		dir, node  string
	)
	cmd := &cobra.Command{
		Use:   "containerd",
		Short: "Write DIR/<registry>/hosts.toml pointing containerd at the node",
		Long: `Write DIR/<registry>/hosts.toml for each --registry: containerd pulls and
resolves through the node and keeps the real registry as its fallback.
_default applies to every registry without a directory of its own.
An existing different file is backed up as hosts.toml.bak-<UTC time> first.

containerd reads these files when its CRI registry config_path is DIR
(/etc/containerd/config.toml); ctr needs --hosts-dir DIR.`,
		Example: "  imgmesh config containerd --registry docker.io --registry ghcr.io --registry _default",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := checkMirrorArgs(registries, node)
			if err != nil {
				return err
			}
			for _, r := range registries {
				if err := c.writeHosts(filepath.Join(dir, r), containerdHosts(r, n)); err != nil {
					return err
				}
			}
			fmt.Fprintf(c.stdout, "containerd uses %s when its registry config_path is %q (ctr: --hosts-dir %s)\n", dir, dir, dir)
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&registries, "registry", []string{"docker.io"}, "registry to mirror (repeatable; _default = every other registry)")
	cmd.Flags().StringVar(&dir, "dir", defaultCertsDir, "containerd hosts directory (its registry config_path)")
	cmd.Flags().StringVar(&node, "node", defaultNode, "URL of the imgmesh node")
	return cmd
}

func (c *cli) configK3sCmd() *cobra.Command {
	var (
		registries []string
		node       string
	)
	cmd := &cobra.Command{
		Use:   "k3s",
		Short: "Print /etc/rancher/k3s/registries.yaml pointing k3s at the node",
		Long: `Print registries.yaml with the node as the mirror endpoint of each
--registry (_default becomes k3s's "*" wildcard). k3s keeps the real registry
as the last endpoint. Save it as /etc/rancher/k3s/registries.yaml and restart k3s.`,
		Example: "  imgmesh config k3s --registry docker.io --registry ghcr.io > /etc/rancher/k3s/registries.yaml",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := checkMirrorArgs(registries, node)
			if err != nil {
				return err
			}
			_, err = io.WriteString(c.stdout, k3sRegistries(registries, n))
			return err
		},
	}
	cmd.Flags().StringArrayVar(&registries, "registry", []string{"docker.io"}, "registry to mirror (repeatable; _default = every registry)")
	cmd.Flags().StringVar(&node, "node", defaultNode, "URL of the imgmesh node")
	return cmd
}

func (c *cli) configDockerCmd() *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "docker",
		Short: "Print the daemon.json fragment making the node Docker's registry mirror",
		Long: `Print the /etc/docker/daemon.json fragment that makes the node dockerd's
registry mirror. Docker uses mirrors for docker.io images only. Merge it into
daemon.json and restart dockerd.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := normalizeNode(node)
			if err != nil {
				return err
			}
			out, err := dockerDaemon(n)
			if err != nil {
				return err
			}
			_, err = io.WriteString(c.stdout, out)
			return err
		},
	}
	cmd.Flags().StringVar(&node, "node", defaultNode, "URL of the imgmesh node")
	return cmd
}

func checkMirrorArgs(registries []string, node string) (string, error) {
	seen := make(map[string]bool, len(registries))
	for _, r := range registries {
		if err := validateRegistry(r); err != nil {
			return "", err
		}
		if seen[r] {
			return "", fmt.Errorf("registry %q given twice", r)
		}
		seen[r] = true
	}
	return normalizeNode(node)
}

// writeHosts writes dir/hosts.toml. Identical content is left alone; a
// different file is first copied to hosts.toml.bak-<UTC time>, and the new
// content replaces it atomically (temp file, fsync, rename).
func (c *cli) writeHosts(dir, content string) error {
	path := filepath.Join(dir, "hosts.toml")
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, []byte(content)):
		fmt.Fprintf(c.stdout, "unchanged %s (already up to date)\n", path)
		return nil
	case err == nil:
		bak, err := c.backup(path, old)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "backed up %s to %s\n", path, bak)
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
	default:
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := writeFileAtomic(path, []byte(content)); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "wrote %s\n", path)
	return nil
}

// backup copies old to a new path.bak-<UTC time>[.N]; it never replaces an
// existing file.
func (c *cli) backup(path string, old []byte) (string, error) {
	base := path + ".bak-" + c.now().UTC().Format("20060102T150405Z")
	for i := 0; i < 100; i++ {
		bak := base
		if i > 0 {
			bak = fmt.Sprintf("%s.%d", base, i)
		}
		f, err := os.OpenFile(bak, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("back up %s: %w", path, err)
		}
		_, err = f.Write(old)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(bak)
			return "", fmt.Errorf("back up %s: %w", path, err)
		}
		return bak, nil
	}
	return "", fmt.Errorf("back up %s: too many backups named %s*", path, base)
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".hosts.toml.tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(0o644)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
