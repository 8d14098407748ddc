package discovery

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// logWriter routes memberlist's own log lines ("[WARN] memberlist: ...")
// into slog at debug level, keeping memberlist's level as an attribute:
// memberlist reports every unanswered probe, which is noise at info.
type logWriter struct{ l *slog.Logger }

func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

func (w logWriter) Write(p []byte) (int, error) {
	if !w.l.Enabled(context.Background(), slog.LevelDebug) {
		return len(p), nil
	}
	for line := range bytes.Lines(p) {
		msg := strings.TrimSpace(string(line))
		level := ""
		if strings.HasPrefix(msg, "[") {
			if i := strings.IndexByte(msg, ']'); i > 0 {
				level, msg = msg[1:i], strings.TrimSpace(msg[i+1:])
			}
		}
		msg = strings.TrimPrefix(msg, "memberlist: ")
		w.l.Debug(msg, "component", "memberlist", "memberlist_level", level)
	}
	return len(p), nil
}
