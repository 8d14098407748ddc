// Package testlog holds a log sink for tests that read what a server logs
// while it is still running, and keeps the logs of tests that failed.
package testlog

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Buffer is a bytes.Buffer safe for concurrent writers and readers.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// KeepDir is the folder IMGMESH_TEST_LOGS names, where failed tests leave
// whole logs; "" when unset.
func KeepDir() string { return os.Getenv("IMGMESH_TEST_LOGS") }

// Keep writes a failed test's log into KeepDir as TEST-what.log (TEST.log
// when what is ""), if KeepDir is set: the tail a test prints is often too
// short to tell why a flaky test failed.
func Keep(t testing.TB, what string, log []byte) {
	dir := KeepDir()
	if dir == "" {
		return
	}
	name := strings.ReplaceAll(t.Name(), "/", "_")
	if what != "" {
		name += "-" + what
	}
	err := os.MkdirAll(dir, 0o755)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".log"), log, 0o644)
	}
	if err != nil {
		t.Logf("keep the log of %s: %v", name, err)
	}
}
