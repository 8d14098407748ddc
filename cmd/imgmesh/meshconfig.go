package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	ma "github.com/multiformats/go-multiaddr"
	"github.com/spf13/pflag"
)

// MeshConfig is how a node joins its fleet. It is inlined in Config: the YAML
// keys sit beside the others.
type MeshConfig struct {
	Mesh          bool              `yaml:"mesh"`
	NodeName      string            `yaml:"node_name"`
	P2PListen     []string          `yaml:"p2p_listen"`
	MDNS          bool              `yaml:"mdns"`
	Bootstrap     []string          `yaml:"bootstrap"`
	GossipListen  string            `yaml:"gossip_listen"`
	Join          []string          `yaml:"join"`
	DataListen    string            `yaml:"data_listen"`
	FleetKey      string            `yaml:"fleet_key"`
	Labels        map[string]string `yaml:"labels"`
	LookupTimeout time.Duration     `yaml:"lookup_timeout"`
	ReadAhead     bool              `yaml:"read_ahead"`
}

func defaultMesh() MeshConfig {
	return MeshConfig{
		Mesh:          true,
		P2PListen:     []string{"/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"},
		MDNS:          true,
		GossipListen:  "0.0.0.0:7946",
		DataListen:    "0.0.0.0:5002",
		LookupTimeout: 15 * time.Millisecond,
		ReadAhead:     true,
	}
}

// meshFlags registers the mesh flags on fs, bound to f's values; the ones
// the user set are copied over the config by apply.
func (m *MeshConfig) register(fs *pflag.FlagSet) {
	d := defaultMesh()
	fs.BoolVar(&m.Mesh, "mesh", d.Mesh, "join a fleet: peers, content routing and the data plane; false = a lone node (env IMGMESH_MESH)")
	fs.StringVar(&m.NodeName, "node-name", "", "this node's name in the fleet (env IMGMESH_NODE_NAME) (default: hostname plus a random suffix, kept in the data dir)")
	fs.StringArrayVar(&m.P2PListen, "p2p-listen", d.P2PListen, "libp2p listen multiaddr, repeatable (env IMGMESH_P2P_LISTEN, comma-separated)")
	fs.BoolVar(&m.MDNS, "mdns", d.MDNS, "find peers on the local network by mDNS (env IMGMESH_MDNS)")
	fs.StringArrayVar(&m.Bootstrap, "bootstrap", nil, "libp2p multiaddr of a peer (ending in /p2p/ID) to connect to at start, repeatable (env IMGMESH_BOOTSTRAP)")
	fs.StringVar(&m.GossipListen, "gossip-listen", d.GossipListen, "HOST:PORT of fleet gossip (memberlist, TCP and UDP) (env IMGMESH_GOSSIP_LISTEN)")
	fs.StringArrayVar(&m.Join, "join", nil, "HOST:PORT of a fleet member's gossip, repeatable (env IMGMESH_JOIN)")
	fs.StringVar(&m.DataListen, "data-listen", d.DataListen, "HOST:PORT of the data plane that serves blobs to peers (env IMGMESH_DATA_LISTEN)")
	fs.StringVar(&m.FleetKey, "fleet-key", "", "fleet key `FILE` (made by imgmesh keygen): private network, encrypted gossip, authenticated data plane (env IMGMESH_FLEET_KEY)")
	fs.StringToStringVar(&m.Labels, "label", nil, "KEY=VALUE label of this node, repeatable (env IMGMESH_LABELS, comma-separated)")
	fs.DurationVar(&m.LookupTimeout, "lookup-timeout", d.LookupTimeout, "how long to ask the fleet who holds content before going upstream (env IMGMESH_LOOKUP_TIMEOUT)")
	fs.BoolVar(&m.ReadAhead, "read-ahead", d.ReadAhead, "when a client reads an image manifest, start fetching its layers at once (env IMGMESH_READ_AHEAD)")
}

var meshFlagNames = map[string]func(dst, src *MeshConfig){
	"mesh":           func(d, s *MeshConfig) { d.Mesh = s.Mesh },
	"node-name":      func(d, s *MeshConfig) { d.NodeName = s.NodeName },
	"p2p-listen":     func(d, s *MeshConfig) { d.P2PListen = s.P2PListen },
	"mdns":           func(d, s *MeshConfig) { d.MDNS = s.MDNS },
	"bootstrap":      func(d, s *MeshConfig) { d.Bootstrap = s.Bootstrap },
	"gossip-listen":  func(d, s *MeshConfig) { d.GossipListen = s.GossipListen },
	"join":           func(d, s *MeshConfig) { d.Join = s.Join },
	"data-listen":    func(d, s *MeshConfig) { d.DataListen = s.DataListen },
	"fleet-key":      func(d, s *MeshConfig) { d.FleetKey = s.FleetKey },
	"label":          func(d, s *MeshConfig) { d.Labels = s.Labels },
	"lookup-timeout": func(d, s *MeshConfig) { d.LookupTimeout = s.LookupTimeout },
	"read-ahead":     func(d, s *MeshConfig) { d.ReadAhead = s.ReadAhead },
}

func (m *MeshConfig) applyFlags(fs *pflag.FlagSet, set *MeshConfig) {
	for name, copyFn := range meshFlagNames {
		if fs.Changed(name) {
			copyFn(m, set)
		}
	}
}

func (m *MeshConfig) applyEnv(lookupEnv func(string) (string, bool)) error {
	env := func(key string) (string, bool) {
		v, ok := lookupEnv(envPrefix + key)
		return v, ok && v != ""
	}
	list := func(v string) []string {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	for key, dst := range map[string]*bool{"MESH": &m.Mesh, "MDNS": &m.MDNS, "READ_AHEAD": &m.ReadAhead} {
		if v, ok := env(key); ok {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("%s%s: %q is not true or false", envPrefix, key, v)
			}
			*dst = b
		}
	}
	for key, dst := range map[string]*string{"NODE_NAME": &m.NodeName, "GOSSIP_LISTEN": &m.GossipListen,
		"DATA_LISTEN": &m.DataListen, "FLEET_KEY": &m.FleetKey} {
		if v, ok := env(key); ok {
			*dst = v
		}
	}
	for key, dst := range map[string]*[]string{"P2P_LISTEN": &m.P2PListen, "BOOTSTRAP": &m.Bootstrap, "JOIN": &m.Join} {
		if v, ok := env(key); ok {
			*dst = list(v)
		}
	}
	if v, ok := env("LABELS"); ok {
		m.Labels = map[string]string{}
		for _, kv := range list(v) {
			k, val, ok := strings.Cut(kv, "=")
			if !ok {
				return fmt.Errorf("%sLABELS: %q is not KEY=VALUE", envPrefix, kv)
			}
			m.Labels[k] = val
		}
	}
	if v, ok := env("LOOKUP_TIMEOUT"); ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%sLOOKUP_TIMEOUT: %q is not a duration (like 15ms)", envPrefix, v)
		}
		m.LookupTimeout = d
	}
	return nil
}

// validate checks the mesh settings, also with --mesh=false: a mistake
// there would otherwise surface only when the mesh is turned on.
func (m *MeshConfig) validate() error {
	type addrs struct {
		flag string
		list []string
	}
	for _, f := range []addrs{{"--p2p-listen", m.P2PListen}, {"--bootstrap", m.Bootstrap}} {
		for _, a := range f.list {
			if _, err := ma.NewMultiaddr(a); err != nil {
				return fmt.Errorf("%s %q: not a multiaddr: %v", f.flag, a, err)
			}
		}
	}
	if m.Mesh && len(m.P2PListen) == 0 {
		return fmt.Errorf("--p2p-listen: at least one address is needed with --mesh")
	}
	for _, f := range []addrs{{"--gossip-listen", []string{m.GossipListen}}, {"--data-listen", []string{m.DataListen}}} {
		for _, a := range f.list {
			if err := validateListen(a); err != nil {
				return fmt.Errorf("%s: %w", f.flag, err)
			}
		}
	}
	for _, a := range m.Join {
		if err := validateListen(a); err != nil {
			return fmt.Errorf("--join %q: want the HOST:PORT of a member's gossip (its --gossip-listen)", a)
		}
	}

	if m.LookupTimeout <= 0 {
		return fmt.Errorf("lookup timeout must be positive, got %s", m.LookupTimeout)
	}
	for k := range m.Labels {
		if k == "" {
			return fmt.Errorf("label with an empty key")
		}
	}
	return nil
}

// portOf returns the port of a bound listener.
func portOf(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }
