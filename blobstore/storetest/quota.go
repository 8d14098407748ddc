package storetest

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// Clocked is a store whose clock a test can set (both implementations).
type Clocked interface {
	SetClock(now func() time.Time)
}

// fakeClock is a settable clock for stores under test.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }
func setClock(t *testing.T, s blobstore.Store) *fakeClock {
	t.Helper()
	cs, ok := s.(Clocked)
	if !ok {
		t.Fatalf("%T has no SetClock", s)
	}
	c := &fakeClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	cs.SetClock(c.now)
	return c
}

func wantPins(t *testing.T, s blobstore.Store, want ...digest.Digest) {
	t.Helper()
	got, err := s.Pins(context.Background())
	sort.Slice(want, func(i, j int) bool { return want[i] < want[j] })
	if err != nil || got == nil || !slices.Equal(got, want) {
		t.Errorf("Pins = %v, %v; want %v", got, err, want)
	}
}

// testPins: only manifests can be pinned; pins list in digest order; a
// deleted manifest loses its pin, whether by Delete or by its last Unlink.
func testPins(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	wantPins(t, s)
	plain := Put(t, s, Blob(40, 100))
	for _, tc := range []struct {
		name string
		d    digest.Digest
	}{
		{"absent", digest.FromString("absent")},
		{"plain blob", plain},
	} {
		if err := s.Pin(ctx, tc.d); !errors.Is(err, blobstore.ErrNotFound) {
			t.Errorf("Pin %s: %v, want ErrNotFound", tc.name, err)
		}
	}
	if err := s.Pin(ctx, "sha256:nothex"); err == nil || errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Pin invalid digest: %v, want a digest error", err)
	}
	a := PutManifest(t, s, "r1", "a", "")
	b := PutManifest(t, s, "r2", "b", "")
	c := PutManifest(t, s, "r2", "c", "")
	for _, d := range []digest.Digest{a.Digest, b.Digest, c.Digest, a.Digest} {
		if err := s.Pin(ctx, d); err != nil {
			t.Fatalf("Pin %s: %v", d, err)
		}
	}
	wantPins(t, s, a.Digest, b.Digest, c.Digest)
	if err := s.Unpin(ctx, c.Digest); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(ctx, c.Digest); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Unpin twice: %v, want ErrNotFound", err)
	}
	if err := s.Unpin(ctx, plain); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("Unpin never pinned: %v, want ErrNotFound", err)
	}
	wantPins(t, s, a.Digest, b.Digest)
	// A user deleting a pinned manifest wins: the pin goes with it.
	if err := s.Delete(ctx, a.Digest); err != nil {
		t.Fatal(err)
	}
	wantPins(t, s, b.Digest)
	// Unlinked from one of two repositories: still there, still pinned.
	if err := s.PutManifest(ctx, "r3", b); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlink(ctx, "r2", b.Digest); err != nil {
		t.Fatal(err)
	}
	wantPins(t, s, b.Digest)
	if err := s.Unlink(ctx, "r3", b.Digest); err != nil {
		t.Fatal(err)
	}
	wantPins(t, s)
	// Recommitting the same bytes does not bring a pin back.
	b2 := PutManifest(t, s, "r2", "b", "")
	if b2.Digest != b.Digest {
		t.Fatal("PutManifest is not deterministic")
	}
	wantPins(t, s)
}

// testAccess: commit and Touch set the last access, Open does not;
// WalkAccess agrees with LastAccess.
func testAccess(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	clock := setClock(t, s)
	t0 := clock.now()
	d1 := Put(t, s, Blob(50, 300))
	clock.advance(time.Minute)
	d2 := Put(t, s, Blob(51, 400))
	missing := digest.FromString("missing")
	if _, err := s.LastAccess(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("LastAccess of absent blob: %v, want ErrNotFound", err)
	}
	s.Touch(ctx, missing) // no effect, no error
	if _, err := s.LastAccess(ctx, missing); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("LastAccess after Touch of absent blob: %v, want ErrNotFound", err)
	}
	s.Touch(ctx, "sha256:nothex") // ignored

	clock.advance(time.Minute)
	ReadAll(t, s, d1) // reading is not using
	wantAccess(t, s, map[digest.Digest]time.Time{d1: t0, d2: t0.Add(time.Minute)})
	clock.advance(time.Hour)
	s.Touch(ctx, d1)
	t1 := clock.now()
	wantAccess(t, s, map[digest.Digest]time.Time{d1: t1, d2: t0.Add(time.Minute)})
	clock.advance(time.Second)
	s.Touch(ctx, d2)
	wantAccess(t, s, map[digest.Digest]time.Time{d1: t1, d2: t1.Add(time.Second)})
	if err := s.Delete(ctx, d1); err != nil {
		t.Fatal(err)
	}
	wantAccess(t, s, map[digest.Digest]time.Time{d2: t1.Add(time.Second)})

	// Committing content the store has counts as a use (a push of a blob
	// an old image held must not leave it first in line for eviction).
	clock.advance(time.Hour)
	Put(t, s, Blob(51, 400))
	wantAccess(t, s, map[digest.Digest]time.Time{d2: clock.now()})
}

func wantAccess(t *testing.T, s blobstore.Store, want map[digest.Digest]time.Time) {
	t.Helper()
	ctx := context.Background()
	got := map[digest.Digest]time.Time{}
	err := s.WalkAccess(ctx, func(i blobstore.Info, at time.Time) error {
		got[i.Digest] = at
		return nil
	})
	if err != nil {
		t.Fatalf("WalkAccess: %v", err)
	}
	if len(got) != len(want) {
		t.Errorf("WalkAccess listed %d blobs, want %d", len(got), len(want))
	}
	for d, w := range want {
		if !got[d].Equal(w) {
			t.Errorf("WalkAccess %.19s = %v, want %v", d, got[d], w)
		}
		if at, err := s.LastAccess(ctx, d); err != nil || !at.Equal(w) {
			t.Errorf("LastAccess %.19s = %v, %v; want %v", d, at, err, w)
		}
	}
}

// testWalkManifests: every record of every repository, and nothing else.
func testWalkManifests(t *testing.T, s blobstore.Store) {
	ctx := context.Background()
	Put(t, s, Blob(60, 10)) // a plain blob is no manifest
	a := PutManifest(t, s, "r1", "a", "")
	b := PutManifest(t, s, "r1", "b", a.Digest)
	if err := s.PutManifest(ctx, "r2", a); err != nil {
		t.Fatal(err)
	}
	type rec struct {
		repo string
		m    blobstore.Manifest
	}
	list := func() []rec {
		var out []rec
		if err := s.WalkManifests(ctx, func(repo string, m blobstore.Manifest) error {
			out = append(out, rec{repo, m})
			return nil
		}); err != nil {
			t.Fatalf("WalkManifests: %v", err)
		}
		sort.Slice(out, func(i, j int) bool {
			if out[i].repo != out[j].repo {
				return out[i].repo < out[j].repo
			}
			return out[i].m.Digest < out[j].m.Digest
		})
		return out
	}
	want := []rec{{"r1", a}, {"r1", b}, {"r2", a}}
	sort.Slice(want, func(i, j int) bool {
		if want[i].repo != want[j].repo {
			return want[i].repo < want[j].repo
		}
		return want[i].m.Digest < want[j].m.Digest
	})
	if got := list(); !reflect.DeepEqual(got, want) {
		t.Errorf("WalkManifests =\n%+v\nwant\n%+v", got, want)
	}
	if err := s.Unlink(ctx, "r1", a.Digest); err != nil {
		t.Fatal(err)
	}
	if got := list(); !reflect.DeepEqual(got, []rec{{"r1", b}, {"r2", a}}) {
		t.Errorf("WalkManifests after Unlink = %+v", got)
	}
	stop := errors.New("stop")
	if err := s.WalkManifests(ctx, func(string, blobstore.Manifest) error { return stop }); !errors.Is(err, stop) {
		t.Errorf("WalkManifests returned %v, want fn's error", err)
	}
}
