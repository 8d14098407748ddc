package main

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/fleetkey"
)

const defaultNodeURL = "http://127.0.0.1:5000"

func (c *cli) keygenCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "keygen",
		Short: "Print a new fleet key (imgmesh keygen > fleet.key; give every node --fleet-key fleet.key)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := fleetkey.Generate()
			if err != nil {
				return err
			}
			return k.Encode(cmd.OutOrStdout())
		},
	}
}

func (c *cli) peersCmd() *cobra.Command {
	var nodeURL string
	cmd := &cobra.Command{
		Use:   "peers",
		Short: "List the fleet as the node sees it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, err := newNodeAPI(nodeURL)
			if err != nil {
				return err
			}
			var peers []admin.Peer
			if err := api.call(cmd.Context(), http.MethodGet, admin.PeersPath, nil, http.StatusOK, &peers, 10*time.Second); err != nil {
				return err
			}
			if len(peers) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no fleet: the node runs alone (--mesh=false, or gossip did not start; see its log)")
				return nil
			}
			sort.Slice(peers, func(i, j int) bool { return peers[i].Name < peers[j].Name })
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDRESSES\tSTATE\tLAST SEEN\tLABELS")
			for _, p := range peers {
				name := p.Name
				if p.Self {
					name += " (self)"
				}
				addrs := []string{}
				if p.Gossip != "" {
					addrs = append(addrs, "gossip="+p.Gossip)
				}
				if p.Registry != "" {
					addrs = append(addrs, "registry="+p.Registry)
				}
				if len(p.P2PAddrs) > 0 {
					addrs = append(addrs, "p2p="+p.P2PAddrs[0])
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, strings.Join(addrs, " "), p.State, ago(c.now(), p.LastSeen), labels(p.Labels))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&nodeURL, "node", defaultNodeURL, "URL of the node's registry API")
	return cmd
}

func (c *cli) statusCmd() *cobra.Command {
	var nodeURL string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show this node: identity, fleet size, store usage, bytes served by source",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			api, err := newNodeAPI(nodeURL)
			if err != nil {
				return err
			}
			var st admin.Status
			if err := api.call(cmd.Context(), http.MethodGet, admin.StatusPath, nil, http.StatusOK, &st, 10*time.Second); err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "version:      %s\n", st.Version)
			if st.PeerID != "" {
				fmt.Fprintf(w, "node:         %s\npeer id:      %s\n", st.NodeName, st.PeerID)
			} else {
				fmt.Fprintf(w, "mesh:         off (a lone node)\n")
			}
			fmt.Fprintf(w, "fleet size:   %d\n", st.FleetSize)
			fmt.Fprintf(w, "store:        %s in %d blobs\n", humanize.IBytes(uint64(st.StoreBytes)), st.StoreBlobs)
			fmt.Fprintf(w, "served:       %s\n", bySource(st.ServedBytes, "local", "peer", "upstream"))
			fmt.Fprintf(w, "fetched:      %s\n", bySource(st.FetchedBytes, "peer", "upstream"))
			return nil
		},
	}
	cmd.Flags().StringVar(&nodeURL, "node", defaultNodeURL, "URL of the node's registry API")
	return cmd
}

func bySource(m map[string]float64, keys ...string) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %s", k, humanize.IBytes(uint64(m[k])))
	}
	return strings.Join(parts, ", ")
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func labels(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	kv := make([]string, 0, len(m))
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}
