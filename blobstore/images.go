package blobstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxReadManifest bounds what the catalog reads of one manifest or config.
const maxReadManifest = 4 << 20

// Image is one image of the store: a tagged manifest (or index) of a
// repository, or an untagged one that no other manifest names.
type Image struct {
	Repo      string
	Tags      []string // tags of Repo pointing at Digest, sorted; empty: untagged
	Digest    digest.Digest
	MediaType string
	// Platforms of the image: an index's entries, or the config's os/arch.
	Platforms []string
	// Size is the bytes the image names (manifests, configs, layers, as far
	// as the manifests present tell); Present the part the store holds.
	Size, Present int64
	// Missing lists what the image names and the store lacks; an index
	// whose platform manifest is missing cannot tell that platform's blobs.
	Missing  []digest.Digest
	Accessed time.Time // latest access of the image's manifests
	Pinned   bool
}

// Complete reports whether the store holds everything the image names.
func (i Image) Complete() bool { return len(i.Missing) == 0 }

// Catalog is a snapshot of the store's images and the graph behind them:
// which manifests name which blobs, which referrers point at them, what is
// pinned.
type Catalog struct {
	Images    []Image // sorted by repository, then first tag, then digest
	present   map[digest.Digest]presentBlob
	nodes     map[digest.Digest]*manifestNode // parsed manifests that are present
	referrers map[digest.Digest][]digest.Digest
	descSize  map[digest.Digest]int64 // sizes descriptors claim, for blobs not present
	pins      map[digest.Digest]bool
}

type presentBlob struct {
	size     int64
	accessed time.Time
}

// manifestNode is what one manifest names.
type manifestNode struct {
	mediaType string
	children  []ocispec.Descriptor // platform manifests of an index
	blobs     []ocispec.Descriptor // config and layers
	config    *ocispec.Descriptor
}

// manifestDoc is the part of a manifest or index the catalog reads.
type manifestDoc struct {
	MediaType string               `json:"mediaType"`
	Manifests []ocispec.Descriptor `json:"manifests"`
	Config    *ocispec.Descriptor  `json:"config"`
	Layers    []ocispec.Descriptor `json:"layers"`
	Blobs     []ocispec.Descriptor `json:"blobs"` // artifact manifests (draft spec)
}

// LoadCatalog reads the store's blobs, tags, manifest records and pins and
// parses every manifest present. It never counts as an access.
func LoadCatalog(ctx context.Context, s Store) (*Catalog, error) {
	c := &Catalog{
		present:   map[digest.Digest]presentBlob{},
		nodes:     map[digest.Digest]*manifestNode{},
		referrers: map[digest.Digest][]digest.Digest{},
		descSize:  map[digest.Digest]int64{},
		pins:      map[digest.Digest]bool{},
	}
	err := s.WalkAccess(ctx, func(i Info, at time.Time) error {
		c.present[i.Digest] = presentBlob{i.Size, at}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	type key struct {
		repo string
		d    digest.Digest
	}
	tags := map[key][]string{}
	err = s.WalkTags(ctx, func(repo, tag string, d digest.Digest) error {
		tags[key{repo, d}] = append(tags[key{repo, d}], tag)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	records := map[key]Manifest{}
	err = s.WalkManifests(ctx, func(repo string, m Manifest) error {
		records[key{repo, m.Digest}] = m
		if m.Subject != "" {
			c.referrers[m.Subject] = append(c.referrers[m.Subject], m.Digest)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	pins, err := s.Pins(ctx)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	for _, d := range pins {
		c.pins[d] = true
	}
	// Parse every manifest reachable from a record or a tag.
	var queue []digest.Digest
	for k := range records {
		queue = append(queue, k.d)
	}
	for k := range tags {
		queue = append(queue, k.d)
	}
	children := map[digest.Digest]bool{}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if _, done := c.nodes[d]; done {
			continue
		}
		if _, ok := c.present[d]; !ok {
			continue
		}
		n, err := c.parse(ctx, s, d)
		if err != nil {
			return nil, err
		}
		c.nodes[d] = n
		for _, ch := range n.children {
			children[ch.Digest] = true
			queue = append(queue, ch.Digest)
		}
	}
	for d := range c.referrers {
		slices.Sort(c.referrers[d])
		c.referrers[d] = slices.Compact(c.referrers[d])
	}

	for k, ts := range tags {
		sort.Strings(ts)
		c.Images = append(c.Images, c.image(ctx, s, k.repo, k.d, ts, records[k].MediaType))
	}
	for k, m := range records {
		if len(tags[k]) > 0 || children[k.d] {
			continue
		}
		if _, ok := c.nodes[m.Subject]; m.Subject != "" && ok {
			continue // a referrer belongs to its subject's image
		}
		c.Images = append(c.Images, c.image(ctx, s, k.repo, k.d, nil, m.MediaType))
	}
	sort.Slice(c.Images, func(i, j int) bool {
		a, b := c.Images[i], c.Images[j]
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		if at, bt := firstOr(a.Tags, "\xff"), firstOr(b.Tags, "\xff"); at != bt {
			return at < bt
		}
		return a.Digest < b.Digest
	})
	return c, nil
}

func firstOr(s []string, def string) string {
	if len(s) == 0 {
		return def
	}
	return s[0]
}

// parse reads manifest d and records the sizes its descriptors claim.
func (c *Catalog) parse(ctx context.Context, s Store, d digest.Digest) (*manifestNode, error) {
	body, err := readBlob(ctx, s, d)
	if errors.Is(err, ErrNotFound) {
		return &manifestNode{}, nil // deleted meanwhile: names nothing
	}
	if err != nil {
		return nil, fmt.Errorf("catalog: manifest %s: %w", d, err)
	}
	var doc manifestDoc
	if json.Unmarshal(body, &doc) != nil {
		return &manifestNode{}, nil // not a manifest we understand: a leaf
	}
	n := &manifestNode{mediaType: doc.MediaType, config: doc.Config}
	for _, ch := range doc.Manifests {
		if CheckDigest(ch.Digest) == nil {
			n.children = append(n.children, ch)
		}
	}
	if doc.Config != nil && CheckDigest(doc.Config.Digest) == nil {
		n.blobs = append(n.blobs, *doc.Config)
	}
	for _, l := range append(doc.Layers, doc.Blobs...) {
		if CheckDigest(l.Digest) == nil && distributable(l) {
			n.blobs = append(n.blobs, l)
		}
	}
	for _, desc := range append(slices.Clone(n.children), n.blobs...) {
		c.descSize[desc.Digest] = desc.Size
	}
	return n, nil
}

// distributable: foreign layers are never pulled from a registry.
func distributable(l ocispec.Descriptor) bool {
	return len(l.URLs) == 0 && !strings.Contains(l.MediaType, "foreign") && !strings.Contains(l.MediaType, "nondistributable")
}

func readBlob(ctx context.Context, s Store, d digest.Digest) ([]byte, error) {
	b, err := s.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	body, err := io.ReadAll(io.LimitReader(b, maxReadManifest+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxReadManifest {
		return nil, fmt.Errorf("larger than %d bytes", maxReadManifest)
	}
	return body, nil
}

// image builds the Image of repo's manifest d.
func (c *Catalog) image(ctx context.Context, s Store, repo string, d digest.Digest, tags []string, mediaType string) Image {
	img := Image{Repo: repo, Tags: tags, Digest: d, MediaType: mediaType, Pinned: c.pins[d]}
	n := c.nodes[d]
	if n != nil && img.MediaType == "" {
		img.MediaType = n.mediaType
	}
	switch {
	case n != nil && len(n.children) > 0:
		for _, ch := range n.children {
			if p := ch.Platform; p != nil {
				img.Platforms = append(img.Platforms, platformString(p.OS, p.Architecture, p.Variant))
			}
		}
	case n != nil && n.config != nil:
		if p := c.configPlatform(ctx, s, n.config.Digest); p != "" {
			img.Platforms = []string{p}
		}
	}
	for _, x := range c.Closure(d, "") {
		if b, ok := c.present[x]; ok {
			img.Size += b.size
			img.Present += b.size
			if c.nodes[x] != nil && b.accessed.After(img.Accessed) {
				img.Accessed = b.accessed
			}
			continue
		}
		img.Size += c.descSize[x]
		img.Missing = append(img.Missing, x)
	}
	return img
}

func platformString(os, arch, variant string) string {
	p := os + "/" + arch
	if variant != "" {
		p += "/" + variant
	}
	return p
}

// configPlatform reads os/arch from an image config, "" if unknown.
func (c *Catalog) configPlatform(ctx context.Context, s Store, d digest.Digest) string {
	if _, ok := c.present[d]; !ok {
		return ""
	}
	body, err := readBlob(ctx, s, d)
	if err != nil {
		return ""
	}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	}
	if json.Unmarshal(body, &cfg) != nil || cfg.OS == "" || cfg.Architecture == "" {
		return ""
	}
	return platformString(cfg.OS, cfg.Architecture, cfg.Variant)
}

// Closure lists every digest manifest d names, d first: its platform
// manifests (only those matching platform, "os/arch[/variant]", when set),
// configs, layers, and the referrers of each of its manifests, present or
// not. Manifests come before the blobs they name.
func (c *Catalog) Closure(d digest.Digest, platform string) []digest.Digest {
	seen := map[digest.Digest]bool{}
	var manifests, blobs []digest.Digest
	var visit func(d digest.Digest, top bool)
	visit = func(d digest.Digest, top bool) {
		if seen[d] {
			return
		}
		seen[d] = true
		manifests = append(manifests, d)
		n := c.nodes[d]
		if n != nil {
			for _, ch := range n.children {
				if top && platform != "" && !matchPlatform(ch.Platform, platform) {
					continue
				}
				visit(ch.Digest, false)
			}
			for _, b := range n.blobs {
				if !seen[b.Digest] {
					seen[b.Digest] = true
					blobs = append(blobs, b.Digest)
				}
			}
		}
		for _, r := range c.referrers[d] {
			visit(r, false)
		}
	}
	visit(d, true)
	return append(manifests, blobs...)
}

// OffersPlatform reports whether d has something for platform: true for
// an image manifest (its platform is in its config, which a pull takes as
// it is) and for "", and for an index when one of its manifests is for it.
func (c *Catalog) OffersPlatform(d digest.Digest, platform string) bool {
	n := c.nodes[d]
	if platform == "" || n == nil || len(n.children) == 0 {
		return true
	}
	for _, ch := range n.children {
		if matchPlatform(ch.Platform, platform) {
			return true
		}
		// An index of indexes: a pull follows a nested index too.
		if nested := c.nodes[ch.Digest]; ch.Digest != d && nested != nil && len(nested.children) > 0 && c.OffersPlatform(ch.Digest, platform) {
			return true
		}
	}
	return false
}

// matchPlatform: p is os/arch or os/arch/variant.
func matchPlatform(p *ocispec.Platform, want string) bool {
	if p == nil {
		return false
	}
	got := platformString(p.OS, p.Architecture, p.Variant)
	return got == want || (strings.Count(want, "/") == 1 && p.OS+"/"+p.Architecture == want)
}

// IsManifest reports whether d is a manifest the catalog parsed.
func (c *Catalog) IsManifest(d digest.Digest) bool { return c.nodes[d] != nil }

// Has reports whether the store held blob d, and its size.
func (c *Catalog) Has(d digest.Digest) (int64, bool) {
	b, ok := c.present[d]
	return b.size, ok
}

// SizeOf is blob d's size: as stored, else as a descriptor claims (0 when
// no manifest present names it).
func (c *Catalog) SizeOf(d digest.Digest) int64 {
	if b, ok := c.present[d]; ok {
		return b.size
	}
	return c.descSize[d]
}

// Protected is everything pinned images name: never evicted.
func (c *Catalog) Protected() map[digest.Digest]bool {
	out := map[digest.Digest]bool{}
	for d := range c.pins {
		for _, x := range c.Closure(d, "") {
			out[x] = true
		}
	}
	return out
}

// Describe returns manifest d of repo as an image, whether or not the
// catalog lists it as one (a platform manifest of an index, say).
func (c *Catalog) Describe(ctx context.Context, s Store, repo string, d digest.Digest) Image {
	if img, ok := c.Find(repo, d); ok {
		return img
	}
	return c.image(ctx, s, repo, d, nil, "")
}

// Find returns repo's image d, if the catalog lists it.
func (c *Catalog) Find(repo string, d digest.Digest) (Image, bool) {
	for _, img := range c.Images {
		if img.Repo == repo && img.Digest == d {
			return img, true
		}
	}
	return Image{}, false
}
