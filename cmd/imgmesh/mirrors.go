package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// defaultRegistry is containerd's name for the hosts.toml that applies to
// every registry without its own directory.
const defaultRegistry = "_default"

// defaultNode is where a device's runtime finds its local node.
const defaultNode = "http://" + defaultListen

// realServer is the registry that containerd falls back to when the node
// cannot serve: Docker Hub's API host for docker.io, else https://NAME.
// _default has none: containerd then uses the host named in the image.
func realServer(registry string) string {
	switch registry {
	case defaultRegistry:
		return ""
	case "docker.io":
		return "https://registry-1.docker.io"
	}
	return "https://" + registry
}

// validateRegistry checks a registry name used as a directory and a host.
func validateRegistry(name string) error {
	if name == defaultRegistry {
		return nil
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\ \t\n\"'*") ||
		name != strings.ToLower(name) {
		return fmt.Errorf("registry %q: want a registry host like docker.io or plant.local:5000, or _default", name)
	}
	if _, err := url.Parse("https://" + name); err != nil {
		return fmt.Errorf("registry %q: %w", name, err)
	}
	return nil
}

// normalizeNode checks the node URL and drops a trailing slash.
func normalizeNode(node string) (string, error) {
	u, err := url.Parse(node)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("node %q: want a URL like %s", node, defaultNode)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("node %q: want scheme://host:port only", node)
	}
	return u.Scheme + "://" + u.Host, nil
}

// tomlString quotes s as a TOML basic string (JSON string escapes are valid
// TOML escapes for the characters a URL may hold).
func tomlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// containerdHosts renders the hosts.toml of one registry: the node first with
// pull and resolve, the real registry (server) as the fallback.
func containerdHosts(registry, node string) string {
	var b strings.Builder
	b.WriteString("# Written by `imgmesh config containerd`: pull through the local imgmesh node;\n")
	if s := realServer(registry); s != "" {
		b.WriteString("# containerd falls back to the real registry (server) when the node fails.\n")
		fmt.Fprintf(&b, "server = %s\n", tomlString(s))
	} else {
		b.WriteString("# no server: containerd falls back to the registry named in the image.\n")
	}
	fmt.Fprintf(&b, "\n[host.%s]\n", tomlString(node))
	b.WriteString("  capabilities = [\"pull\", \"resolve\"]\n")
	return b.String()
}

// k3sMirrorName maps containerd's _default to k3s's wildcard mirror.
func k3sMirrorName(registry string) string {
	if registry == defaultRegistry {
		return "*"
	}
	return registry
}

// k3sRegistries renders /etc/rancher/k3s/registries.yaml with the node as
// the mirror endpoint of each registry (k3s keeps the real registry as the
// implicit last endpoint).
func k3sRegistries(registries []string, node string) string {
	var b strings.Builder
	b.WriteString("# /etc/rancher/k3s/registries.yaml, written by `imgmesh config k3s`\n")
	b.WriteString("mirrors:\n")
	for _, r := range registries {
		fmt.Fprintf(&b, "  %s:\n    endpoint:\n      - %s\n", tomlString(k3sMirrorName(r)), tomlString(node))
	}
	return b.String()
}

// dockerDaemon renders the daemon.json fragment that makes dockerd use the
// node as its registry mirror (Docker mirrors docker.io only).
func dockerDaemon(node string) (string, error) {
	b, err := json.MarshalIndent(map[string][]string{"registry-mirrors": {node}}, "", "  ")
	if err != nil {
		return "", fmt.Errorf("daemon.json: %w", err)
	}
	return string(b) + "\n", nil
}
