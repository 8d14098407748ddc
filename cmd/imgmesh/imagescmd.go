package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/imgmesh/imgmesh/admin"
)

// imagesFlags are the flags every images subcommand shares.
type imagesFlags struct {
	node   string
	output string
}

func (f *imagesFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.node, "node", defaultNodeURL, "URL of the node's registry API")
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "table or json")
}

func (f *imagesFlags) check() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: want table or json", f.output)
	}
	return nil
}

func (c *cli) imagesCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "images",
		Short: "Manage the images a node holds: ls, inspect, rm, pin, unpin, missing",
		Long: `Manage the images a node holds. References are written as for docker pull:
docker.io/library/nginx:1.27, nginx:1.27 (Docker Hub), host:5000/app@sha256:...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	cmd.AddCommand(c.imagesLsCmd(), c.imagesInspectCmd(), c.imagesRmCmd(), c.imagesPinCmd("pin"),
		c.imagesPinCmd("unpin"), c.imagesMissingCmd())
	return cmd
}

func (c *cli) imagesLsCmd() *cobra.Command {
	var f imagesFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the node's images: size, bytes present, complete, pinned, last use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var imgs []admin.Image
			if err := f.call(cmd.Context(), http.MethodGet, admin.ImagesPath, nil, &imgs); err != nil {
				return err
			}
			if f.output == "json" {
				return imgPrintJSON(cmd.OutOrStdout(), imgs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tPLATFORMS\tSIZE\tPRESENT\tCOMPLETE\tPINNED\tLAST USED")
			for _, i := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.Ref, imgShortDigest(i.Digest), imgPlatforms(i.Platforms),
					humanize.IBytes(uint64(i.Size)), humanize.IBytes(uint64(i.Present)), imgYesNo(i.Complete), imgYesNo(i.Pinned), ago(c.now(), i.LastAccess))
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	return cmd
}

func (c *cli) imagesInspectCmd() *cobra.Command {
	var f imagesFlags
	cmd := &cobra.Command{
		Use:   "inspect REF",
		Short: "Show one image: digest, platforms, tags, and every manifest and blob it names",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var img admin.Image
			if err := f.call(cmd.Context(), http.MethodGet, admin.ImagesPath+"/inspect?ref="+url.QueryEscape(args[0]), nil, &img); err != nil {
				return err
			}
			if f.output == "json" {
				return imgPrintJSON(cmd.OutOrStdout(), img)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "image:       %s\n", img.Ref)
			fmt.Fprintf(w, "digest:      %s\n", img.Digest)
			fmt.Fprintf(w, "media type:  %s\n", img.MediaType)
			fmt.Fprintf(w, "tags:        %s\n", imgOrDash(strings.Join(img.Tags, ", ")))
			fmt.Fprintf(w, "platforms:   %s\n", imgPlatforms(img.Platforms))
			fmt.Fprintf(w, "size:        %s (%s present)\n", humanize.IBytes(uint64(img.Size)), humanize.IBytes(uint64(img.Present)))
			fmt.Fprintf(w, "complete:    %s\n", imgYesNo(img.Complete))
			fmt.Fprintf(w, "pinned:      %s\n", imgYesNo(img.Pinned))
			fmt.Fprintf(w, "last used:   %s\n", ago(c.now(), img.LastAccess))
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "\nKIND\tDIGEST\tSIZE\tPRESENT")
			for _, b := range img.Blobs {
				kind := "blob"
				if b.Manifest {
					kind = "manifest"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", kind, b.Digest, humanize.IBytes(uint64(b.Size)), imgYesNo(b.Present))
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	return cmd
}

func (c *cli) imagesRmCmd() *cobra.Command {
	var f imagesFlags
	cmd := &cobra.Command{
		Use:   "rm REF...",
		Short: "Remove images: untag, then delete what no other image uses or a pin keeps (withdrawn from the fleet)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var res []admin.RemoveResult
			if err := f.call(cmd.Context(), http.MethodPost, admin.ImagesPath+"/rm", imgRefsBody(args, ""), &res); err != nil {
				return err
			}
			if f.output == "json" {
				return imgPrintJSON(cmd.OutOrStdout(), res)
			}
			for _, r := range res {
				what := fmt.Sprintf("deleted %d blobs (%s)", r.Blobs, humanize.IBytes(uint64(r.Bytes)))
				switch {
				case !r.Removed:
					what = "untagged (another tag still names it)"
				case r.Shared:
					what = "removed (content kept: another image or a pin uses it)"
				}
				if r.Unpinned {
					what += ", unpinned"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", r.Ref, what)
			}
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func (c *cli) imagesPinCmd(op string) *cobra.Command {
	var f imagesFlags
	short := "Pin images: eviction never removes them or anything they name"
	if op == "unpin" {
		short = "Unpin images: eviction may remove them again"
	}
	cmd := &cobra.Command{
		Use:   op + " REF...",
		Short: short,
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			var res []admin.PinResult
			if err := f.call(cmd.Context(), http.MethodPost, admin.ImagesPath+"/"+op, imgRefsBody(args, ""), &res); err != nil {
				return err
			}
			if f.output == "json" {
				return imgPrintJSON(cmd.OutOrStdout(), res)
			}
			for _, r := range res {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %sned (%s)\n", r.Ref, op, imgShortDigest(r.Digest))
			}
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func (c *cli) imagesMissingCmd() *cobra.Command {
	var f imagesFlags
	var list, platform string
	cmd := &cobra.Command{
		Use:   "missing [-f LIST] [REF...]",
		Short: "Tell which images of a list are not complete on the node, and why; exits 1 if any",
		Long: `Tell which images of a list are not complete on the node, and why (tag
unknown, manifest unknown, blobs missing). LIST has one reference per line;
blank lines and lines starting with # are skipped; - reads standard input.
With --platform os/arch only that platform of a multi-platform image counts.
Exits 0 when every image is complete, 1 otherwise.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(); err != nil {
				return err
			}
			refs := args
			if list != "" {
				more, err := readRefList(cmd.InOrStdin(), list)
				if err != nil {
					return err
				}
				refs = append(refs, more...)
			}
			if len(refs) == 0 {
				return usageError{cmd: cmd.CommandPath(), err: errors.New("no references: give -f LIST or REF arguments")}
			}
			var res []admin.MissingResult
			if err := f.call(cmd.Context(), http.MethodPost, admin.ImagesPath+"/missing", imgRefsBody(refs, platform), &res); err != nil {
				return err
			}
			incomplete := 0
			for _, r := range res {
				if !r.Complete {
					incomplete++
				}
			}
			if f.output == "json" {
				if err := imgPrintJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "IMAGE\tCOMPLETE\tWHY")
				for _, r := range res {
					why := r.Reason
					if len(r.Missing) > 0 {
						why += fmt.Sprintf(": %d (%s)", len(r.Missing), humanize.IBytes(uint64(r.MissingBytes)))
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Ref, imgYesNo(r.Complete), imgOrDash(why))
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if incomplete > 0 {
				return fmt.Errorf("%d of %d images are not complete on the node", incomplete, len(res))
			}
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().StringVarP(&list, "file", "f", "", "file with one image reference per line (- = standard input)")
	cmd.Flags().StringVar(&platform, "platform", "", "os/arch[/variant]: only this platform of a multi-platform image counts")
	return cmd
}

// maxListRefs bounds a reference list (the node's images API takes as many).
const maxListRefs = 10000

// readRefList reads image references from path ("-": stdin), one per
// line; blank lines and # comments are skipped. A line that is not a
// reference is named by its number before anything is sent.
func readRefList(stdin io.Reader, path string) ([]string, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("reference list: %w", err)
		}
		defer f.Close()
		r = f
	}
	var refs []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if _, err := admin.ParseImageRef(line); err != nil {
			return nil, fmt.Errorf("reference list %s line %d: %.60q: %v", path, n, line, err)
		}
		if refs = append(refs, line); len(refs) > maxListRefs {
			return nil, fmt.Errorf("reference list %s: more than %d references", path, maxListRefs)
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = errors.New("a line longer than 64 KiB: is it a list of image references?")
		}
		return nil, fmt.Errorf("reference list %s: %w", path, err)
	}
	return refs, nil
}

func imgRefsBody(refs []string, platform string) any {
	return map[string]any{"refs": refs, "platform": platform}
}

// call sends a request to the images API and decodes the answer into
// out; an error answer becomes its message.
func (f *imagesFlags) call(ctx context.Context, method, path string, body, out any) error {
	api, err := newNodeAPI(f.node)
	if err != nil {
		return err
	}
	return api.call(ctx, method, path, body, http.StatusOK, out, 2*time.Minute)
}

func imgPrintJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func imgShortDigest(d string) string {
	if _, hex, ok := strings.Cut(d, ":"); ok && len(hex) > 12 {
		return d[:len(d)-len(hex)] + hex[:12]
	}
	return d
}

func imgPlatforms(p []string) string { return imgOrDash(strings.Join(p, ",")) }

func imgYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func imgOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// defaultRegistry is the registry of requests without ?ns= (the first
// upstream), "" without upstream.
func (c Config) defaultRegistry() string {
	if len(c.Upstreams) == 0 {
		return ""
	}
	return c.Upstreams[0].Name
}
