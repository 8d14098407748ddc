// Package httpx holds small HTTP helpers shared by the node's servers.
package httpx

import (
	"io"
	"net/http"
)

// Recorder captures the status and body size of a response for metrics and
// access logs. It forwards ReadFrom, so http.ServeContent over an *os.File
// still uses sendfile, and Unwrap, so http.ResponseController reaches the
// connection.
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

func (w *Recorder) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
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
