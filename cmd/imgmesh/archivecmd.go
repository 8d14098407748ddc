package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/archive"
)

func (c *cli) importCmd() *cobra.Command {
	var (
		opts  archive.ImportOptions
		quiet bool
		noPin bool
	)
	cmd := &cobra.Command{
		Use:   "import PATH",
		Short: "Load an OCI layout folder, an oci-archive or a docker save tar into a node",
		Long: `Load every image of PATH into the node, for a line without internet:
an OCI image layout folder, an oci-archive (that layout in a tar), or a
'docker save' tar (also gzip-compressed). Every blob and manifest is checked
against its digest on the way; nothing that fails is stored.

Names come from the archive (io.containerd.image.name, the OCI ref.name,
docker RepoTags); --name REF replaces them for a one-image archive, --name
REPOSITORY keeps the archive's tags under another repository. A name like
docker.io/library/nginx:1.27 lands where containerd's mirror pull of it looks.
A docker save archive has no registry manifest: an OCI manifest is made for it,
with the config and layers as they are (uncompressed layers stay uncompressed).

What is imported is pinned, as a prefetch pins: a disk quota (--max-disk)
does not evict it. --no-pin leaves it to the quota like any pulled image.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !quiet {
				opts.Progress = archive.NewProgress(c.stderr, "import", isTerminal(c.stderr))
			}
			opts.Logger = cliLogger(c.stderr)
			res, err := archive.Import(ctx, args[0], opts)
			if err != nil {
				return err
			}
			for _, img := range res.Images {
				fmt.Fprintf(cmd.OutOrStdout(), "imported %s %s\n", img.Name, img.Digest)
			}
			if !quiet {
				fmt.Fprintf(c.stderr, "%d image name(s), %s from %s %s\n", len(res.Images), humanize.IBytes(uint64(res.Bytes)), res.Format, args[0])
			}
			if noPin || len(res.Images) == 0 {
				return nil
			}
			if err := pinImported(ctx, opts.Node, res.Images); err != nil {
				return fmt.Errorf("imported, but not pinned (a disk quota may evict it): %w", err)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noPin, "no-pin", false, "do not pin what is imported (a disk quota may then evict it)")
	cmd.Flags().StringVar(&opts.Node, "node", defaultNodeURL, "URL of the node's registry API (http://user:password@host:port for basic auth)")
	cmd.Flags().StringVar(&opts.Name, "name", "", "image name to use instead of the archive's: REF (one-image archive) or REPOSITORY (keeps the archive's tags)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	return cmd
}

// pinImported pins each imported image by digest through the node's images
// API, so that a quota cannot evict what a line without internet depends on.
func pinImported(ctx context.Context, nodeURL string, images []archive.Image) error {
	api, err := newNodeAPI(nodeURL)
	if err != nil {
		return err
	}
	refs := make([]string, len(images))
	for i, img := range images {
		refs[i] = img.Name
		if !strings.Contains(img.Name, "@") { // a name by digest already is one
			refs[i] += "@" + img.Digest.String()
		}
	}
	var res []admin.PinResult
	return api.call(ctx, http.MethodPost, admin.ImagesPath+"/pin", imgRefsBody(refs, ""), http.StatusOK, &res, 2*time.Minute)
}

func (c *cli) exportCmd() *cobra.Command {
	var (
		opts  archive.ExportOptions
		out   string
		quiet bool
	)
	cmd := &cobra.Command{
		Use:   "export REF... -o FILE|-",
		Short: "Write images from a node to an oci-archive tar, digests unchanged",
		Long: `Write the images REF... (by tag or digest, as the node serves them) to FILE,
an oci-archive: an OCI image layout in a tar, each REF an index.json entry
named by org.opencontainers.image.ref.name and io.containerd.image.name.
Manifests are copied byte for byte, so every digest stays (skopeo's
docker-archive re-encodes them). 'imgmesh import', 'ctr images import' and
'skopeo copy oci-archive:FILE:TAG ...' read it.

The node pulls through what it does not hold yet, so on a connected machine
one export gathers an image for a line without internet.

-o - writes the tar to stdout (the list of images then goes to stderr).`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, refs []string) error {
			if out == "" {
				return usageError{cmd: cmd.CommandPath(), err: fmt.Errorf("-o FILE is required")}
			}
			// -o - writes the tar to stdout, as docker save -o - does; the
			// list of images then goes to stderr, out of the tar's way.
			toStdout := out == "-"
			if toStdout && isTerminal(cmd.OutOrStdout()) {
				return errors.New("-o -: stdout is a terminal; redirect it to a file or a pipe, or give -o FILE")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if !quiet {
				opts.Progress = archive.NewProgress(c.stderr, "export", isTerminal(c.stderr))
			}
			var (
				res  *archive.ExportResult
				err  error
				list = cmd.OutOrStdout()
				dest = out
			)
			if toStdout {
				res, err = archive.ExportTo(ctx, refs, cmd.OutOrStdout(), opts)
				list, dest = c.stderr, "stdout"
			} else {
				res, err = archive.Export(ctx, refs, out, opts)
			}
			if _, ok := errors.AsType[*archive.OutputError](err); ok {
				return fmt.Errorf("-o %w", err)
			}
			if err != nil {
				return err
			}
			for _, img := range res.Images {
				fmt.Fprintf(list, "exported %s %s\n", img.Name, img.Digest)
			}
			if !quiet {
				fmt.Fprintf(c.stderr, "%d blobs, %s written to %s\n", res.Blobs, humanize.IBytes(uint64(res.Bytes)), dest)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the oci-archive file to write, - for stdout (required)")
	cmd.Flags().StringVar(&opts.Node, "node", defaultNodeURL, "URL of the node's registry API (http://user:password@host:port for basic auth)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "no progress on stderr")
	return cmd
}

// isTerminal reports whether w is a terminal (progress is then redrawn in
// place rather than printed line by line).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd())) // not /dev/null, also a character device
}

// cliLogger prints warnings as "imgmesh: warning: msg key=value".
func cliLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: slog.LevelWarn,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		},
	}))
}
