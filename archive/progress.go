package archive

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
)

// Progress shows bytes done of a total: one line redrawn in place on a
// terminal, or a new line every few seconds otherwise. It draws from the
// goroutines that move bytes (no goroutine of its own). A nil *Progress
// shows nothing.
type Progress struct {
	mu    sync.Mutex
	w     io.Writer
	label string
	tty   bool
	now   func() time.Time

	start, drawn time.Time
	total, done  int64
}

// NewProgress draws on w (stderr); tty says whether w is a terminal.
func NewProgress(w io.Writer, label string, tty bool) *Progress {
	return &Progress{w: w, label: label, tty: tty, now: time.Now}
}

// How often a line is drawn.
const (
	ttyEvery  = 100 * time.Millisecond
	lineEvery = 2 * time.Second
)

// SetTotal sets the number of bytes to move and starts the clock.
func (p *Progress) SetTotal(n int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = n
	p.start = p.now()
	p.draw(p.start)
}

// Add counts n more bytes done.
func (p *Progress) Add(n int64) {
	if p == nil || n == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	now := p.now()
	every := lineEvery
	if p.tty {
		every = ttyEvery
	}
	if now.Sub(p.drawn) >= every {
		p.draw(now)
	}
}

// Finish draws the last line, with the time taken, and ends it.
func (p *Progress) Finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.draw(p.now())
	if p.tty {
		fmt.Fprintln(p.w)
	}
}

// abort ends a line left open on a terminal, so that an error message
// starts on a line of its own.
func (p *Progress) abort() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.tty && !p.drawn.IsZero() {
		fmt.Fprintln(p.w)
	}
}

// draw writes the line; the caller holds mu.
func (p *Progress) draw(now time.Time) {
	p.drawn = now
	line := fmt.Sprintf("%s %s %3d%%  %s / %s", p.label, bar(p.done, p.total, 24), percent(p.done, p.total),
		humanize.IBytes(uint64(p.done)), humanize.IBytes(uint64(p.total)))
	if el := now.Sub(p.start); el >= 100*time.Millisecond {
		line += fmt.Sprintf("  %s/s  %s", humanize.IBytes(uint64(float64(p.done)/el.Seconds())), el.Round(100*time.Millisecond))
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
	} else {
		fmt.Fprintln(p.w, line)
	}
}

func percent(done, total int64) int64 {
	if total <= 0 {
		return 100
	}
	return min(100, done*100/total)
}

// bar is [=====>     ] of width characters.
func bar(done, total int64, width int) string {
	n := int(percent(done, total)) * width / 100
	head := ""
	if n < width {
		head = ">"
	}
	return "[" + strings.Repeat("=", n) + head + strings.Repeat(" ", width-n-len(head)) + "]"
}
