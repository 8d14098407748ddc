package prefetch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// load reads the state file: missing is empty; unreadable is renamed to
// PATH.bad (logged) and the node starts empty rather than not at all.
func (m *Manager) load() (snapshot, error) {
	empty := snapshot{V: snapshotVersion}
	if m.opts.Path == "" {
		return empty, nil
	}
	b, err := os.ReadFile(m.opts.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return empty, nil
	}
	if err != nil {
		return snapshot{}, fmt.Errorf("read %s: %w", m.opts.Path, err)
	}
	s, err := decodeSnapshot(b)
	if err != nil {
		bad := m.opts.Path + ".bad"
		m.log.Warn("prefetch state file unreadable: set aside, starting empty", "path", m.opts.Path, "moved_to", bad, "err", err)
		if rerr := os.Rename(m.opts.Path, bad); rerr != nil {
			return snapshot{}, fmt.Errorf("set aside %s: %w", m.opts.Path, rerr)
		}
		return empty, nil
	}
	return s, nil
}

// save writes the state file when something changed since the last write:
// a temp file, fsynced, renamed over the old one.
func (m *Manager) save() error {
	if m.opts.Path == "" {
		return nil
	}
	m.saveMu.Lock()
	defer m.saveMu.Unlock()
	m.mu.Lock()
	if !m.unsaved {
		m.mu.Unlock()
		return nil
	}
	s := m.t.snapshot()
	m.unsaved = false
	m.mu.Unlock()
	err := writeFile(m.opts.Path, s)
	if err != nil {
		m.mu.Lock()
		m.unsaved = true
		m.mu.Unlock()
	}
	return err
}

func writeFile(path string, s snapshot) (err error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(append(b, '\n')); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
