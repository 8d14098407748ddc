package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/imgmesh/imgmesh/blobstore"
)

// PutManifest commits a small manifest blob (distinct per name) and indexes
// it in repo with the given subject (may be empty).
func PutManifest(t testing.TB, s blobstore.Store, repo, name string, subject digest.Digest) blobstore.Manifest {
	t.Helper()
	body := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"name":%q,"subject":%q}`, ocispec.MediaTypeImageManifest, name, subject)
	m := blobstore.Manifest{
		Digest:       Put(t, s, body),
		MediaType:    ocispec.MediaTypeImageManifest,
		Size:         int64(len(body)),
		ArtifactType: "application/vnd.test." + name,
		Subject:      subject,
		Annotations:  map[string]string{"name": name},
	}
	if err := s.PutManifest(context.Background(), repo, m); err != nil {
		t.Fatalf("PutManifest %s: %v", name, err)
	}
	return m
}

func wantLinked(t *testing.T, s blobstore.Store, repo string, d digest.Digest, want bool) {
	t.Helper()
	if got, err := s.Linked(context.Background(), repo, d); err != nil || got != want {
		t.Errorf("Linked(%s, %.19s) = %v, %v; want %v", repo, d, got, err, want)
	}
}

func wantTags(t *testing.T, s blobstore.Store, repo string, want ...string) {
	t.Helper()
	got, err := s.Tags(context.Background(), repo)
	if err != nil || got == nil || !slices.Equal(got, want) {
		t.Errorf("Tags(%s) = %#v, %v; want %q", repo, got, err, want)
	}
}

func wantReferrers(t *testing.T, s blobstore.Store, repo string, subject digest.Digest, want ...blobstore.Manifest) {
	t.Helper()
	got, err := s.Referrers(context.Background(), repo, subject)
	if err != nil || got == nil {
		t.Fatalf("Referrers(%s, %.19s) = %v, %v; want a non-nil list", repo, subject, got, err)
	}
	descs := []ocispec.Descriptor{}
	for _, m := range want {
		descs = append(descs, m.Descriptor())
	}
	slices.SortFunc(descs, func(a, b ocispec.Descriptor) int { return cmpString(a.Digest, b.Digest) })
	if !reflect.DeepEqual(got, descs) {
		t.Errorf("Referrers(%s, %.19s) =\n%+v\nwant\n%+v", repo, subject, got, descs)
	}
}

func cmpString[S ~string](a, b S) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func testLinks(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	missing := digest.FromString("missing")
	if err := s.Link(ctx, "a", missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Link of a missing blob: %v, want ErrNotFound", err)
	}
	wantLinked(t, s, "a", missing, false)
	b := Blob(20, 1234)
	d := Put(t, s, b)
	keep := Put(t, s, Blob(21, 10)) // never linked: Unlink must not touch it
	wantLinked(t, s, "a", d, false)
	for _, repo := range []string{"a", "a/b", "c"} {
		if err := s.Link(ctx, repo, d); err != nil {
			t.Fatalf("Link %s: %v", repo, err)
		}
	}
	if err := s.Link(ctx, "a", d); err != nil {
		t.Errorf("Link twice: %v", err)
	}
	wantLinked(t, s, "a", d, true)
	wantLinked(t, s, "a/b", d, true)
	wantLinked(t, s, "b", d, false)
	steps := []struct {
		name      string
		repo      string
		err       error
		blobAfter bool
	}{
		{"first", "a", nil, true},
		{"again", "a", blobstore.ErrNotFound, true},
		{"never linked", "zzz", blobstore.ErrNotFound, true},
		{"second", "a/b", nil, true},
		{"last", "c", nil, false},
	}
	for _, st := range steps {
		if err := s.Unlink(ctx, st.repo, d); !errors.Is(err, st.err) || (err == nil) != (st.err == nil) {
			t.Fatalf("%s: Unlink(%s): %v, want %v", st.name, st.repo, err, st.err)
		}
		wantLinked(t, s, st.repo, d, false)
		if _, err := s.Stat(ctx, d); (err == nil) != st.blobAfter {
			t.Fatalf("%s: Stat after Unlink(%s): %v, want blob present=%v", st.name, st.repo, err, st.blobAfter)
		}
	}
	WantNotFound(t, s, d)
	wantUsage(t, s, 10, 1)
	if _, err := s.Stat(ctx, keep); err != nil {
		t.Errorf("unlinked bystander blob: %v", err)
	}
}

func testManifests(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	if err := s.PutManifest(ctx, "r", blobstore.Manifest{Digest: digest.FromString("nope"), Size: 4}); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("PutManifest of a missing blob: %v, want ErrNotFound", err)
	}
	m := PutManifest(t, s, "r", "one", "")
	wantLinked(t, s, "r", m.Digest, true)
	got, err := s.GetManifest(ctx, "r", m.Digest)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Errorf("GetManifest = %+v, %v; want %+v", got, err, m)
	}
	if _, err := s.GetManifest(ctx, "other", m.Digest); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("GetManifest in another repo: %v, want ErrNotFound", err)
	}
	if _, err := s.GetManifest(ctx, "r", digest.FromString("x")); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("GetManifest of unknown digest: %v, want ErrNotFound", err)
	}
	// Re-putting replaces the record.
	m.Annotations = map[string]string{"v": "2"}
	if err := s.PutManifest(ctx, "r", m); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetManifest(ctx, "r", m.Digest); !reflect.DeepEqual(got, m) {
		t.Errorf("GetManifest after re-put = %+v, want %+v", got, m)
	}
}

func testReferrers(t *testing.T, s blobstore.Store) {
	subject := PutManifest(t, s, "r", "subject", "")
	other := PutManifest(t, s, "r", "other", "")
	a := PutManifest(t, s, "r", "sig", subject.Digest)
	b := PutManifest(t, s, "r", "sbom", subject.Digest)
	c := PutManifest(t, s, "r", "attest", other.Digest)
	elsewhere := PutManifest(t, s, "r2", "sig2", subject.Digest)
	// The subject need not be stored (OCI allows pushing referrers first).
	ghost := digest.FromString("ghost subject")
	g := PutManifest(t, s, "r", "ghost", ghost)

	wantReferrers(t, s, "r", subject.Digest, a, b)
	wantReferrers(t, s, "r", other.Digest, c)
	wantReferrers(t, s, "r", ghost, g)
	wantReferrers(t, s, "r2", subject.Digest, elsewhere)
	wantReferrers(t, s, "r", a.Digest)
	wantReferrers(t, s, "nobody", subject.Digest)
	if err := s.Unlink(context.Background(), "r", a.Digest); err != nil {
		t.Fatal(err)
	}
	wantReferrers(t, s, "r", subject.Digest, b)
}

func testTags(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	if err := s.Tag(ctx, "r", "x", digest.FromString("missing")); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Tag of a missing blob: %v, want ErrNotFound", err)
	}
	wantTags(t, s, "r")
	m1 := PutManifest(t, s, "r", "one", "")
	m2 := PutManifest(t, s, "r", "two", "")
	for _, tag := range []string{"latest", "1.0", "b", "A", "a", "1.10", "1.9"} {
		if err := s.Tag(ctx, "r", tag, m1.Digest); err != nil {
			t.Fatalf("Tag %s: %v", tag, err)
		}
	}
	if err := s.Tag(ctx, "r/sub", "only-sub", m2.Digest); err != nil {
		t.Fatal(err)
	}
	wantTags(t, s, "r", "1.0", "1.10", "1.9", "A", "a", "b", "latest")
	wantTags(t, s, "r/sub", "only-sub")
	wantTags(t, s, "nobody")
	if err := s.Tag(ctx, "r", "latest", m2.Digest); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, repo, tag string
		want            digest.Digest
	}{
		{"moved", "r", "latest", m2.Digest},
		{"kept", "r", "1.0", m1.Digest},
		{"other repo", "r/sub", "only-sub", m2.Digest},
		{"unknown tag", "r", "nope", ""},
		{"tag of other repo", "r", "only-sub", ""},
	}
	for _, tt := range tests {
		got, err := s.Resolve(ctx, tt.repo, tt.tag)
		if tt.want == "" && !errors.Is(err, blobstore.ErrNotFound) || tt.want != "" && (err != nil || got != tt.want) {
			t.Errorf("%s: Resolve(%s:%s) = %s, %v; want %q", tt.name, tt.repo, tt.tag, got, err, tt.want)
		}
	}
	if err := s.Untag(ctx, "r", "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Untag(ctx, "r", "b"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Untag twice: %v, want ErrNotFound", err)
	}
	wantTags(t, s, "r", "1.0", "1.10", "1.9", "A", "a", "latest")
	walked := map[string]digest.Digest{}
	if err := s.WalkTags(ctx, func(repo, tag string, d digest.Digest) error {
		walked[repo+":"+tag] = d
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(walked) != 7 || walked["r:latest"] != m2.Digest || walked["r/sub:only-sub"] != m2.Digest || walked["r:1.0"] != m1.Digest {
		t.Errorf("WalkTags saw %v; want the 7 tags of r and r/sub", walked)
	}
	// Untagging leaves the manifest.
	if _, err := s.GetManifest(ctx, "r", m1.Digest); err != nil {
		t.Errorf("GetManifest after Untag: %v", err)
	}
	// A moved tag no longer goes with its old manifest.
	if err := s.Unlink(ctx, "r", m2.Digest); err != nil {
		t.Fatal(err)
	}
	wantTags(t, s, "r", "1.0", "1.10", "1.9", "A", "a")
}

// testUnlinkCascades: unlinking a manifest from one repo drops that repo's
// record, tags and referrer entry, and nothing of other repos.
func testUnlinkCascades(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	subject := PutManifest(t, s, "r1", "subject", "")
	m := PutManifest(t, s, "r1", "ref", subject.Digest)
	if err := s.PutManifest(ctx, "r2", m); err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"r1", "r2"} {
		if err := s.Tag(ctx, repo, "v1", m.Digest); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Unlink(ctx, "r1", m.Digest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetManifest(ctx, "r1", m.Digest); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("GetManifest r1 after Unlink: %v", err)
	}
	wantTags(t, s, "r1")
	wantReferrers(t, s, "r1", subject.Digest)
	// r2 keeps everything, and so the blob stays.
	if _, err := s.GetManifest(ctx, "r2", m.Digest); err != nil {
		t.Errorf("GetManifest r2: %v", err)
	}
	wantTags(t, s, "r2", "v1")
	wantReferrers(t, s, "r2", subject.Digest, m)
	if _, err := s.Stat(ctx, m.Digest); err != nil {
		t.Errorf("blob still linked from r2: %v", err)
	}
	if err := s.Unlink(ctx, "r2", m.Digest); err != nil {
		t.Fatal(err)
	}
	WantNotFound(t, s, m.Digest)
	wantTags(t, s, "r2")
}

func testDeleteCascades(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	subject := PutManifest(t, s, "r1", "subject", "")
	m := PutManifest(t, s, "r1", "ref", subject.Digest)
	if err := s.PutManifest(ctx, "r2", m); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "r1", "a", m.Digest); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "r1", "b", subject.Digest); err != nil {
		t.Fatal(err)
	}
	if err := s.Tag(ctx, "untracked", "t", m.Digest); err != nil { // tag without a link
		t.Fatal(err)
	}
	if err := s.Delete(ctx, m.Digest); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	WantNotFound(t, s, m.Digest)
	for _, repo := range []string{"r1", "r2"} {
		wantLinked(t, s, repo, m.Digest, false)
		if _, err := s.GetManifest(ctx, repo, m.Digest); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("GetManifest %s after Delete: %v", repo, err)
		}
		wantReferrers(t, s, repo, subject.Digest)
	}
	wantTags(t, s, "r1", "b")
	wantTags(t, s, "untracked")
	if _, err := s.Resolve(ctx, "r1", "a"); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Resolve deleted tag: %v", err)
	}
	if err := s.Delete(ctx, m.Digest); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Delete twice: %v, want ErrNotFound", err)
	}
	if err := s.Unlink(ctx, "r1", m.Digest); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Unlink after Delete: %v, want ErrNotFound", err)
	}
	// The subject is untouched.
	if _, err := s.GetManifest(ctx, "r1", subject.Digest); err != nil {
		t.Errorf("subject after Delete of referrer: %v", err)
	}
	wantUsage(t, s, subject.Size, 1)
}

func testUsage(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	wantUsage(t, s, 0, 0)
	d1 := Put(t, s, Blob(30, 1000))
	Put(t, s, Blob(31, 2000))
	b3 := Blob(32, 3000)
	PutAs(t, s, b3, SHA512(b3))
	wantUsage(t, s, 6000, 3)
	Put(t, s, Blob(31, 2000)) // already there
	wantUsage(t, s, 6000, 3)
	if err := s.Delete(ctx, d1); err != nil {
		t.Fatal(err)
	}
	wantUsage(t, s, 5000, 2)
}

func testWalk(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	if got := walk(t, s); len(got) != 0 {
		t.Errorf("Walk of empty store = %v", got)
	}
	var want []blobstore.Info
	for i := range 40 {
		b := Blob(uint64(1000+i), i)
		want = append(want, blobstore.Info{Digest: Put(t, s, b), Size: int64(i)})
	}
	b := Blob(99, 77)
	want = append(want, blobstore.Info{Digest: PutAs(t, s, b, SHA512(b)), Size: 77})
	slices.SortFunc(want, func(a, b blobstore.Info) int { return cmpString(a.Digest, b.Digest) })
	if got := walk(t, s); !reflect.DeepEqual(got, want) {
		t.Errorf("Walk found %d blobs, want %d (or sizes differ)", len(got), len(want))
	}
	stop := errors.New("stop")
	calls := 0
	err := s.Walk(ctx, func(blobstore.Info) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Errorf("Walk with fn error: %v after %d calls; want stop after 3", err, calls)
	}
}
