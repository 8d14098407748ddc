package blobstore

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

// indexOptions tunes badger for a small device: the node's idle RSS goal is
// under 60 MB, and badger's defaults (5 memtables of 64 MB, a 256 MB block
// cache, 1 GB value log files, 4 compactors) are built for servers. The
// index holds only small records (links, tags, manifest records, blob
// metadata), so small tables cost nothing in speed.
func indexOptions(dir string, logger *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithLogger(badgerLogger{logger}).
		// Writes that must survive a power cut (links, manifests, tags) sync
		// explicitly (Files.durable); blob metadata is rebuilt by reconcile.
		WithSyncWrites(false).
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithBaseTableSize(1 << 20).
		WithBaseLevelSize(4 << 20).
		WithValueLogFileSize(16 << 20).
		// Records are small: keep them in the LSM tree, not the value log.
		WithValueThreshold(64 << 10).
		WithNumCompactors(2).
		WithNumGoroutines(2).
		// Without compression (or encryption) badger reads blocks straight
		// from the mmapped tables and needs no block cache; the few table
		// indices stay in memory (IndexCacheSize 0).
		WithCompression(options.None).
		WithBlockCacheSize(0).
		WithIndexCacheSize(0).
		WithMetricsEnabled(false).
		// All index writes are serialised by Files.mu.
		WithDetectConflicts(false)
}

// badgerLogger routes badger's log lines to slog: errors and warnings as
// such, its chatty info lines at debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) log(level slog.Level, format string, args ...any) {
	if !b.l.Enabled(context.Background(), level) {
		return
	}
	b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, args...)), "component", "badger")
}

func (b badgerLogger) Errorf(f string, a ...any)   { b.log(slog.LevelError, f, a...) }
func (b badgerLogger) Warningf(f string, a ...any) { b.log(slog.LevelWarn, f, a...) }
func (b badgerLogger) Infof(f string, a ...any)    { b.log(slog.LevelDebug, f, a...) }
func (b badgerLogger) Debugf(f string, a ...any)   { b.log(slog.LevelDebug, f, a...) }
