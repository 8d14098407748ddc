package blobstore_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

// reopen closes s and opens dir again.
func reopen(t *testing.T, s *blobstore.Files, dir string) *blobstore.Files {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return openFiles(t, dir)
}

// snapshot is everything a user can see of one repository in a store.
type snapshot struct {
	Blobs        []blobstore.Info
	Bytes, Count int64
	Tags         []string
	Tagged       []digest.Digest
	Manifests    []blobstore.Manifest
	Referrers    int
	Linked       []bool
}

func snap(t *testing.T, s blobstore.Store, repo string, ms []blobstore.Manifest) snapshot {
	t.Helper()
	ctx := context.Background()
	var sn snapshot
	if err := s.Walk(ctx, func(i blobstore.Info) error { sn.Blobs = append(sn.Blobs, i); return nil }); err != nil {
		t.Fatal(err)
	}
	var err error
	if sn.Bytes, sn.Count, err = s.Usage(ctx); err != nil {
		t.Fatal(err)
	}
	if sn.Tags, err = s.Tags(ctx, repo); err != nil {
		t.Fatal(err)
	}
	for _, tag := range sn.Tags {
		d, err := s.Resolve(ctx, repo, tag)
		if err != nil {
			t.Fatal(err)
		}
		sn.Tagged = append(sn.Tagged, d)
	}
	for _, m := range ms {
		got, err := s.GetManifest(ctx, repo, m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		sn.Manifests = append(sn.Manifests, got)
		refs, err := s.Referrers(ctx, repo, m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		sn.Referrers += len(refs)
		linked, err := s.Linked(ctx, repo, m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		sn.Linked = append(sn.Linked, linked)
	}
	return sn
}

func TestFilesSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	ctx := context.Background()
	subject := storetest.PutManifest(t, s, "app", "subject", "")
	ref := storetest.PutManifest(t, s, "app", "sig", subject.Digest)
	layer := storetest.Blob(1, 200_000)
	storetest.PutAs(t, s, layer, storetest.SHA512(layer))
	for _, tag := range []string{"v2", "v1", "latest"} {
		if err := s.Tag(ctx, "app", tag, subject.Digest); err != nil {
			t.Fatal(err)
		}
	}
	meta, err := s.Meta(ctx, subject.Digest)
	if err != nil || meta.Size != subject.Size || meta.Created.IsZero() {
		t.Fatalf("Meta = %+v, %v", meta, err)
	}
	ms := []blobstore.Manifest{subject, ref}
	before := snap(t, s, "app", ms)
	if len(before.Blobs) != 3 || before.Referrers != 1 || len(before.Tags) != 3 {
		t.Fatalf("setup: %+v", before)
	}

	s = reopen(t, s, dir)
	if after := snap(t, s, "app", ms); !reflect.DeepEqual(after, before) {
		t.Errorf("after reopen:\n%+v\nbefore:\n%+v", after, before)
	}
	if got, err := s.Meta(ctx, subject.Digest); err != nil || !got.Created.Equal(meta.Created) {
		t.Errorf("Meta after reopen = %+v, %v; want created %v", got, err, meta.Created)
	}
	if b := storetest.ReadAll(t, s, storetest.SHA512(layer)); !slices.Equal(b, layer) {
		t.Error("layer differs after reopen")
	}
}

func TestFilesStaleIngestRemoved(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	b := storetest.Blob(2, 100_000)
	w, err := s.NewWriter(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	// The process "dies": the writer is never committed nor cancelled.
	s = reopen(t, s, dir)
	if left := files(t, filepath.Join(dir, "ingest")); len(left) != 0 {
		t.Errorf("stale ingest files after reopen: %v", left)
	}
	storetest.WantNotFound(t, s, digest.FromBytes(b))
	if got := files(t, filepath.Join(dir, "blobs")); len(got) != 0 {
		t.Errorf("blobs after reopen: %v", got)
	}
	_ = w.Cancel()
}

// TestFilesReconcile: the index follows the blob files after a crash between
// rename and index write, or a file removed by hand.
func TestFilesReconcile(t *testing.T) {
	dir := t.TempDir()
	s := openFiles(t, dir)
	ctx := context.Background()
	gone := storetest.PutManifest(t, s, "app", "gone", "")
	if err := s.Tag(ctx, "app", "v1", gone.Digest); err != nil {
		t.Fatal(err)
	}
	kept := storetest.Put(t, s, storetest.Blob(3, 1000))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", gone.Digest.Encoded()[:2], gone.Digest.Encoded())); err != nil {
		t.Fatal(err)
	}
	orphan := storetest.Blob(4, 3000) // renamed into place, index never written
	od := digest.FromBytes(orphan)
	odir := filepath.Join(dir, "blobs", "sha256", od.Encoded()[:2])
	if err := os.MkdirAll(odir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{od.Encoded(): orphan, "not-a-digest": []byte("junk")} {
		if err := os.WriteFile(filepath.Join(odir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// A file where a blob directory belongs (a .DS_Store) is ignored too.
	if err := os.WriteFile(filepath.Join(dir, "blobs", "sha256", ".DS_Store"), []byte("junk"), 0o644); err != nil {
		t.Fatal(err)
	}

	s = openFiles(t, dir)
	storetest.WantNotFound(t, s, gone.Digest)
	if linked, _ := s.Linked(ctx, "app", gone.Digest); linked {
		t.Error("link to a vanished blob survived")
	}
	if _, err := s.Resolve(ctx, "app", "v1"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("tag of a vanished blob: %v", err)
	}
	var walked []digest.Digest
	_ = s.Walk(ctx, func(i blobstore.Info) error { walked = append(walked, i.Digest); return nil })
	slices.Sort(walked)
	want := []digest.Digest{kept, od}
	slices.Sort(want)
	if !slices.Equal(walked, want) {
		t.Errorf("Walk = %v, want %v", walked, want)
	}
	if b, n, _ := s.Usage(ctx); b != 4000 || n != 2 {
		t.Errorf("Usage = %d, %d; want 4000, 2", b, n)
	}
	if err := s.Link(ctx, "app", od); err != nil {
		t.Errorf("Link of the re-indexed blob: %v", err)
	}
}

const crashEnv = "BLOBSTORE_CRASH_DIR"

// crashChild commits blobs forever, printing each digest once Commit
// returned, with a second writer always half-way through; the parent kills
// it at an arbitrary moment.
func crashChild(dir string) {
	s, err := blobstore.Open(dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx := context.Background()
	pending, _ := s.NewWriter(ctx)
	for i := uint64(os.Getpid()) << 20; ; i++ {
		b := storetest.Blob(i, 100_000+int(i%7)*50_000)
		_, _ = pending.Write(b[:1000])
		w, err := s.NewWriter(ctx)
		if err != nil {
			os.Exit(3)
		}
		for off := 0; off < len(b); off += 32 << 10 {
			_, _ = w.Write(b[off:min(off+32<<10, len(b))])
		}
		d := digest.FromBytes(b)
		if i%3 == 0 {
			d = storetest.SHA512(b)
		}
		if _, err := w.Commit(ctx, int64(len(b)), d); err != nil {
			os.Exit(4)
		}
		fmt.Println(d)
	}
}

// TestFilesCrash kills a process committing blobs (SIGKILL, several times at
// arbitrary points) and checks after each restart that every file under a
// digest name hashes to that name, every acknowledged commit is there, and no
// temp file is left.
func TestFilesCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	dir := t.TempDir()
	var acked []digest.Digest
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		for n := 0; n < 5+round*3 && sc.Scan(); n++ {
			acked = append(acked, digest.Digest(sc.Text()))
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if len(acked) < 5 {
			t.Fatalf("round %d: child committed only %d blobs", round, len(acked))
		}

		s := openFiles(t, dir)
		for _, d := range acked {
			if _, err := s.Stat(context.Background(), d); err != nil {
				t.Errorf("round %d: acknowledged blob %s: %v", round, d, err)
			}
		}
		for _, rel := range files(t, filepath.Join(dir, "blobs")) {
			verifyFile(t, filepath.Join(dir, "blobs", rel))
		}
		if left := files(t, filepath.Join(dir, "ingest")); len(left) != 0 {
			t.Errorf("round %d: ingest after restart: %v", round, left)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// verifyFile checks that blobs/<alg>/<xx>/<hex> hashes to alg:hex.
func verifyFile(t *testing.T, path string) {
	t.Helper()
	parts := strings.Split(filepath.ToSlash(path), "/")
	alg, hex := parts[len(parts)-3], parts[len(parts)-1]
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if alg == "sha512" {
		h = sha512.New()
	}
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprintf("%x", h.Sum(nil)); got != hex {
		t.Errorf("file %s holds content hashing to %s", path, got)
	}
}
