package blobstore_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

func openFiles(t *testing.T, dir string) *blobstore.Files {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	f, err := blobstore.Open(dir, logger)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := f.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return f
}

func TestFilesConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) blobstore.Store { return openFiles(t, t.TempDir()) })
}

// files lists the regular files under root (relative paths).
func files(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestFilesLayout(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	b := storetest.Blob(1, 5000)
	d256 := storetest.Put(t, s, b)
	d512 := storetest.PutAs(t, s, b, storetest.SHA512(b))
	for _, d := range []digest.Digest{d256, d512} {
		p := filepath.Join(dir, "blobs", string(d.Algorithm()), d.Encoded()[:2], d.Encoded())
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s: file %s: %v (equal=%v)", d.Algorithm(), p, err, bytes.Equal(got, b))
		}
		rc, err := s.Open(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := rc.(*os.File); !ok {
			t.Errorf("Open returned %T, want *os.File (sendfile)", rc)
		}
		rc.Close()
	}
	if left := files(t, filepath.Join(dir, "ingest")); len(left) != 0 {
		t.Errorf("ingest after commit: %v", left)
	}
}

// TestFilesDiscardLeavesNothing: a failed or cancelled ingest leaves no temp
// file and no file under any digest name.
func TestFilesDiscardLeavesNothing(t *testing.T) {
	b := storetest.Blob(2, 70_000)
	tests := []struct {
		name string
		end  func(w blobstore.Writer) error
		want error
	}{
		{"size mismatch", func(w blobstore.Writer) error {
			_, err := w.Commit(context.Background(), 1, digest.FromBytes(b))
			return err
		}, blobstore.ErrSizeMismatch},
		{"digest mismatch", func(w blobstore.Writer) error {
			_, err := w.Commit(context.Background(), int64(len(b)), digest.FromString("other"))
			return err
		}, blobstore.ErrDigestMismatch},
		{"sha512 mismatch", func(w blobstore.Writer) error {
			_, err := w.Commit(context.Background(), -1, storetest.SHA512(b[:10]))
			return err
		}, blobstore.ErrDigestMismatch},
		{"cancelled context", func(w blobstore.Writer) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := w.Commit(ctx, int64(len(b)), digest.FromBytes(b))
			return err
		}, context.Canceled},
		{"cancel", func(w blobstore.Writer) error { return w.Cancel() }, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			s := openFiles(t, dir)
			w, err := s.NewWriter(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write(b); err != nil {
				t.Fatal(err)
			}
			if len(files(t, filepath.Join(dir, "ingest"))) != 1 {
				t.Fatal("no temp file in ingest while writing")
			}
			if err := tt.end(w); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if left := files(t, filepath.Join(dir, "ingest")); len(left) != 0 {
				t.Errorf("ingest keeps %v", left)
			}
			if left := files(t, filepath.Join(dir, "blobs")); len(left) != 0 {
				t.Errorf("blobs holds %v", left)
			}
			storetest.WantNotFound(t, s, digest.FromBytes(b))
		})
	}
}

func TestFilesWritable(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	if err := s.Writable(context.Background()); err != nil {
		t.Fatalf("Writable: %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "ingest")); err != nil {
		t.Fatal(err)
	}
	if err := s.Writable(context.Background()); err == nil {
		t.Error("Writable without an ingest dir succeeded")
	}
	if err := os.Mkdir(filepath.Join(dir, "ingest"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Writable(context.Background()); err != nil {
		t.Errorf("Writable after repair: %v", err)
	}
	if left := files(t, filepath.Join(dir, "ingest")); len(left) != 0 {
		t.Errorf("Writable left %v", left)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Writable(context.Background()); err == nil {
		t.Error("Writable after Close succeeded")
	}
}

// TestFilesOpenTwice: a second Open of a store in use fails and does not
// touch the first one's ingest.
func TestFilesOpenTwice(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	b := storetest.Blob(3, 1000)
	w, err := s.NewWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if s2, err := blobstore.Open(dir, nil); err == nil {
		s2.Close()
		t.Fatal("second Open of a store in use succeeded")
	}
	if _, err := w.Commit(context.Background(), int64(len(b)), digest.FromBytes(b)); err != nil {
		t.Errorf("Commit after a failed second Open: %v", err)
	}
}
