package blobstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

var _ Store = (*Memory)(nil)

// Memory is an in-memory Store for tests. It passes the same conformance
// suite (storetest) as the file store.
type Memory struct {
	mu        sync.Mutex
	blobs     map[digest.Digest][]byte
	links     map[string]map[digest.Digest]bool // repo -> digests
	manifests map[string]map[digest.Digest]Manifest
	tags      map[string]map[string]digest.Digest
	pins      map[digest.Digest]bool
	access    map[digest.Digest]time.Time // last commit or Touch
	now       func() time.Time
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{
		blobs:     map[digest.Digest][]byte{},
		links:     map[string]map[digest.Digest]bool{},
		manifests: map[string]map[digest.Digest]Manifest{},
		tags:      map[string]map[string]digest.Digest{},
		pins:      map[digest.Digest]bool{},
		access:    map[digest.Digest]time.Time{},
		now:       time.Now,
	}
}

func (m *Memory) Stat(_ context.Context, d digest.Digest) (Info, error) {
	if err := CheckDigest(d); err != nil {
		return Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return Info{}, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return Info{Digest: d, Size: int64(len(b))}, nil
}

func (m *Memory) Open(_ context.Context, d digest.Digest) (Blob, error) {
	if err := CheckDigest(d); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.blobs[d]
	if !ok {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return nopCloser{bytes.NewReader(b)}, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func (m *Memory) NewWriter(context.Context) (Writer, error) {
	return &memWriter{m: m}, nil
}

func (m *Memory) Delete(_ context.Context, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; !ok {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	m.deleteLocked(d)
	return nil
}

// deleteLocked removes blob d and everything in every repository pointing at it.
func (m *Memory) deleteLocked(d digest.Digest) {
	delete(m.blobs, d)
	delete(m.pins, d)
	delete(m.access, d)
	for repo := range m.links {
		m.dropLocked(repo, d)
	}
	for repo := range m.tags {
		m.dropLocked(repo, d)
	}
}

// dropLocked removes d's link, manifest record and tags from repo.
func (m *Memory) dropLocked(repo string, d digest.Digest) {
	delete(m.links[repo], d)
	delete(m.manifests[repo], d)
	for tag, td := range m.tags[repo] {
		if td == d {
			delete(m.tags[repo], tag)
		}
	}
}

func (m *Memory) Walk(_ context.Context, fn func(Info) error) error {
	m.mu.Lock()
	infos := make([]Info, 0, len(m.blobs))
	for d, b := range m.blobs {
		infos = append(infos, Info{Digest: d, Size: int64(len(b))})
	}
	m.mu.Unlock()
	for _, i := range infos {
		if err := fn(i); err != nil {
			return err
		}
	}
	return nil
}

func (m *Memory) Link(_ context.Context, repo string, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; !ok {
		return fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	if m.links[repo] == nil {
		m.links[repo] = map[digest.Digest]bool{}
	}
	m.links[repo][d] = true
	return nil
}

func (m *Memory) Linked(_ context.Context, repo string, d digest.Digest) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.links[repo][d], nil
}

func (m *Memory) Unlink(_ context.Context, repo string, d digest.Digest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.links[repo][d] {
		return fmt.Errorf("link %s@%s: %w", repo, d, ErrNotFound)
	}
	m.dropLocked(repo, d)
	for _, l := range m.links {
		if l[d] {
			return nil
		}
	}
	m.deleteLocked(d)
	return nil
}

func (m *Memory) PutManifest(ctx context.Context, repo string, man Manifest) error {
	if err := m.Link(ctx, repo, man.Digest); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.manifests[repo] == nil {
		m.manifests[repo] = map[digest.Digest]Manifest{}
	}
	m.manifests[repo][man.Digest] = man
	return nil
}

func (m *Memory) GetManifest(_ context.Context, repo string, d digest.Digest) (Manifest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	man, ok := m.manifests[repo][d]
	if !ok {
		return Manifest{}, fmt.Errorf("manifest %s@%s: %w", repo, d, ErrNotFound)
	}
	return man, nil
}

func (m *Memory) Referrers(_ context.Context, repo string, subject digest.Digest) ([]ocispec.Descriptor, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []ocispec.Descriptor{}
	for _, man := range m.manifests[repo] {
		if man.Subject == subject {
			out = append(out, man.Descriptor())
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Digest < out[j].Digest })
	return out, nil
}

func (m *Memory) Tag(_ context.Context, repo, tag string, d digest.Digest) error {
	if err := CheckDigest(d); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.blobs[d]; !ok {
		return fmt.Errorf("manifest %s: %w", d, ErrNotFound)
	}
	if m.tags[repo] == nil {
		m.tags[repo] = map[string]digest.Digest{}
	}
	m.tags[repo][tag] = d
	return nil
}

func (m *Memory) Resolve(_ context.Context, repo, tag string) (digest.Digest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, ok := m.tags[repo][tag]
	if !ok {
		return "", fmt.Errorf("tag %s:%s: %w", repo, tag, ErrNotFound)
	}
	return d, nil
}

func (m *Memory) Tags(_ context.Context, repo string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tags := make([]string, 0, len(m.tags[repo]))
	for t := range m.tags[repo] {
		tags = append(tags, t)
	}
	sort.Strings(tags)
	return tags, nil
}

func (m *Memory) Untag(_ context.Context, repo, tag string) error {
	return m.untag(repo, tag, "")
}

func (m *Memory) UntagIf(_ context.Context, repo, tag string, d digest.Digest) error {
	return m.untag(repo, tag, d)
}

func (m *Memory) untag(repo, tag string, want digest.Digest) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, ok := m.tags[repo][tag]
	if !ok || (want != "" && t != want) {
		return fmt.Errorf("tag %s:%s: %w", repo, tag, ErrNotFound)
	}
	delete(m.tags[repo], tag)
	return nil
}

func (m *Memory) WalkTags(_ context.Context, fn func(repo, tag string, d digest.Digest) error) error {
	type tagged struct {
		repo, tag string
		d         digest.Digest
	}
	m.mu.Lock()
	var all []tagged
	for repo, tags := range m.tags {
		for tag, d := range tags {
			all = append(all, tagged{repo, tag, d})
		}
	}
	m.mu.Unlock()
	for _, t := range all {
		if err := fn(t.repo, t.tag, t.d); err != nil {
			return err
		}
	}
	return nil
}

func (m *Memory) Usage(context.Context) (int64, int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var n int64
	for _, b := range m.blobs {
		n += int64(len(b))
	}
	return n, int64(len(m.blobs)), nil
}

func (m *Memory) Writable(context.Context) error { return nil }
func (m *Memory) Close() error                   { return nil }

type memWriter struct {
	m      *Memory
	mu     sync.Mutex
	buf    []byte
	closed bool
}

func (w *memWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrClosed
	}
	w.buf = append(w.buf, p...)
	return len(p), nil
}

func (w *memWriter) ReadAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("read at %d: negative offset", off)
	}
	if off >= int64(len(w.buf)) {
		return 0, io.EOF
	}
	n := copy(p, w.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (w *memWriter) Size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return int64(len(w.buf))
}

func (w *memWriter) Sum() digest.Digest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return digest.FromBytes(w.buf)
}

func (w *memWriter) Commit(_ context.Context, size int64, expected digest.Digest) (Info, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return Info{}, ErrClosed
	}
	w.closed = true
	buf := w.buf
	w.buf = nil
	if err := Verify(buf, size, expected); err != nil {
		return Info{}, fmt.Errorf("commit %s: %w", expected, err)
	}
	w.m.mu.Lock()
	w.m.blobs[expected] = buf
	w.m.access[expected] = w.m.now()
	w.m.mu.Unlock()
	return Info{Digest: expected, Size: int64(len(buf))}, nil
}

func (w *memWriter) Cancel() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	w.buf = nil
	return nil
}
