package blobstore

import (
	"errors"
	"testing"
)

// TestOpenStoreInUse: a second process (here: a second Open) on the same
// directory gets ErrInUse, which says what to do, not badger's lock text.
func TestOpenStoreInUse(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s2, err := Open(dir, nil); !errors.Is(err, ErrInUse) {
		if err == nil {
			s2.Close()
		}
		t.Fatalf("second Open of %s: %v, want ErrInUse", dir, err)
	}
}
