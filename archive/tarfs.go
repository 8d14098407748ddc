package archive

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"
)

// tarFS reads a tar file in place: one pass notes where each member's bytes
// are (skipping over the data), then members are read with ReadAt, several
// at a time, without extracting anything. A gzip-compressed tar is first
// decompressed to a temporary file, removed by Close.
type tarFS struct {
	f       *os.File
	members map[string]member // cleaned path -> member
	tmp     string            // decompressed copy, "" if none
}

// member is where a regular file's bytes are, or what a link points to.
type member struct {
	off, size int64
	link      string // target path of a symlink or hard link
}

var _ fs.StatFS = (*tarFS)(nil)

// openTar indexes the tar (or gzip-compressed tar) at p. When ctx ends
// during decompression, the partial copy is removed and ctx's error returned.
func openTar(ctx context.Context, p string) (_ *tarFS, err error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	t := &tarFS{f: f}
	defer func() {
		if err != nil {
			_ = t.Close()
		}
	}()
	var magic [2]byte
	if _, err := io.ReadFull(f, magic[:]); err == nil && magic == [2]byte{0x1f, 0x8b} {
		if err := t.gunzip(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	if err := t.index(); err != nil {
		return nil, fmt.Errorf("%s: %w: %v", p, ErrFormat, err)
	}
	return t, nil
}

// gunzip replaces t.f by a decompressed temporary copy.
func (t *tarFS) gunzip(ctx context.Context) error {
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	zr, err := gzip.NewReader(bufio.NewReaderSize(t.f, 1<<20))
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp("", "imgmesh-import-*.tar")
	if err != nil {
		return err
	}
	t.tmp = tmp.Name()
	if _, err := io.Copy(tmp, ctxReader{ctx, zr}); err != nil {
		tmp.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("decompress: %w", err)
	}
	if err := zr.Close(); err != nil {
		tmp.Close()
		return err
	}
	t.f.Close()
	t.f = tmp
	return nil
}

// ctxReader stops reading once ctx ends (a Ctrl-C during a long copy).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// index reads every header once. An *os.File is an io.Seeker, so the tar
// reader seeks over the members' data instead of reading it, and the
// file's offset after Next is where the member's bytes start.
func (t *tarFS) index() error {
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	t.members = map[string]member{}
	tr := tar.NewReader(t.f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name, ok := cleanMember(h.Name)
		if !ok {
			continue
		}
		switch h.Typeflag {
		case tar.TypeReg: // the reader reports the legacy '\x00' as TypeReg too
			for k := range h.PAXRecords {
				if strings.HasPrefix(k, "GNU.sparse.") {
					return fmt.Errorf("%s: sparse members are not supported", h.Name)
				}
			}
			off, err := t.f.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			t.members[name] = member{off: off, size: h.Size}
		case tar.TypeSymlink:
			target := h.Linkname
			if !strings.HasPrefix(target, "/") {
				target = path.Join(path.Dir(name), target)
			}
			if target, ok := cleanMember(target); ok {
				t.members[name] = member{link: target}
			}
		case tar.TypeLink:
			if target, ok := cleanMember(h.Linkname); ok {
				t.members[name] = member{link: target}
			}
		}
	}
	return nil
}

// cleanMember turns a member name into an fs.FS path ("./blobs/x" ->
// "blobs/x"); ok is false for names that are no such path.
func cleanMember(n string) (string, bool) {
	n = path.Clean("/" + n)[1:]
	return n, n != "" && fs.ValidPath(n)
}

// lookup follows links to the regular file name names.
func (t *tarFS) lookup(name string) (member, bool) {
	for range 16 {
		m, ok := t.members[name]
		if !ok || m.link == "" {
			return m, ok
		}
		name = m.link
	}
	return member{}, false // a link loop
}

// Open opens a regular file of the archive.
func (t *tarFS) Open(name string) (fs.File, error) {
	m, ok := t.lookup(name)
	if !fs.ValidPath(name) || !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &tarFile{SectionReader: io.NewSectionReader(t.f, m.off, m.size), name: name}, nil
}

// Stat describes a regular file of the archive.
func (t *tarFS) Stat(name string) (fs.FileInfo, error) {
	m, ok := t.lookup(name)
	if !fs.ValidPath(name) || !ok {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return fileInfo{name: path.Base(name), size: m.size}, nil
}

// Close closes the archive and removes a decompressed copy.
func (t *tarFS) Close() error {
	err := t.f.Close()
	if t.tmp != "" {
		if rerr := os.Remove(t.tmp); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// tarFile is one member, read in place.
type tarFile struct {
	*io.SectionReader
	name string
}

func (f *tarFile) Stat() (fs.FileInfo, error) {
	return fileInfo{name: path.Base(f.name), size: f.Size()}, nil
}

func (f *tarFile) Close() error { return nil }

// fileInfo describes a regular file of a tar.
type fileInfo struct {
	name string
	size int64
}

func (fi fileInfo) Name() string       { return fi.name }
func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) Mode() fs.FileMode  { return 0o444 }
func (fi fileInfo) ModTime() time.Time { return time.Time{} }
func (fi fileInfo) IsDir() bool        { return false }
func (fi fileInfo) Sys() any           { return nil }
