package registryapi

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/internal/httpx"
	"github.com/imgmesh/imgmesh/node"
)

// blob serves GET, HEAD and DELETE /v2/<name>/blobs/<digest>.
func (s *Server) blob(w http.ResponseWriter, r *http.Request, rt route) {
	d, perr := parseDigest(rt.ref)
	if perr != nil {
		s.fail(w, r, perr)
		return
	}
	name := nodeName(r, rt)
	if r.Method == http.MethodDelete {
		s.deleteBlob(w, r, name, d)
		return
	}
	head := r.Method == http.MethodHead
	c, err := s.src.Blob(r.Context(), name, d, head)
	if err != nil {
		s.fail(w, r, classify(err, CodeBlobUnknown))
		return
	}
	if c.Body != nil {
		defer c.Body.Close()
	}
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", d.String())
	h.Set("ETag", `"`+d.String()+`"`)
	h.Set("Accept-Ranges", "bytes")
	h.Set("Cache-Control", "max-age=31536000, immutable")
	if head || c.Body == nil {
		if !head {
			s.fail(w, r, apiError(CodeUnknown, "source returned no body"))
			return
		}
		h.Set("Content-Length", itoa(c.Size))
		w.WriteHeader(http.StatusOK)
		return
	}
	if rh := r.Header.Get("Range"); rh != "" {
		ranges, err := parseRange(rh, c.Size)
		_, isFile := c.Body.(*os.File)
		switch {
		case errors.Is(err, errRangeSyntax):
			// RFC 9110 §14.2: a Range of another unit or with an invalid
			// range set is ignored; the whole blob is served.
			r.Header.Del("Range")
		case err != nil:
			h.Set("Content-Range", "bytes */"+itoa(c.Size))
			s.fail(w, r, apiError(CodeRangeInvalid, map[string]string{"range": rh, "reason": err.Error()}).wrap(err))
			return
		case (!isFile && len(ranges) > 1) || (c.Arriving && ranges[0].start+ranges[0].length < c.Size):
			// Sent whole instead (a server may ignore Range): a multipart
			// answer is written from a goroutine that can outlive this
			// handler; and a range of a blob still arriving that stops
			// short of its end would be a complete-looking 206 of bytes not
			// yet verified, where a whole body's last byte waits for the
			// digest (a blob that fails ends in a cut connection).
			r.Header.Del("Range")
		default:
			// ServeContent re-parses Range: hand it exactly what was validated.
			r.Header.Set("Range", formatRange(ranges))
		}
	}
	s.serveBlob(w, r, c)
}

// serveBlob streams c with http.ServeContent (ranges, conditional requests,
// sendfile for local files). A read error mid-body aborts the response so
// the client sees a cut connection, never a complete-looking wrong blob.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request, c node.Content) {
	s.m.blobServed(c.Source)
	source := c.Source
	if source == "" {
		source = "unknown"
	}
	var before int64
	rec, _ := w.(*httpx.Recorder)
	if rec != nil {
		before = rec.Written()
	}
	var body io.ReadSeeker = c.Body
	var guard *readGuard
	if _, isFile := c.Body.(*os.File); !isFile {
		// A body still arriving may fail before its first byte (the
		// upstream went away, the disk is full): while nothing is sent,
		// the client gets the error itself, not an empty reply.
		if c.Arriving && c.Size > 0 {
			var first [1]byte
			_, err := io.ReadFull(c.Body, first[:])
			if err == nil {
				_, err = c.Body.Seek(0, io.SeekStart)
			}
			if err != nil {
				s.fail(w, r, classify(err, CodeBlobUnknown))
				return
			}
		}
		guard = &readGuard{rs: c.Body}
		body = guard
	}
	http.ServeContent(w, r, "", time.Time{}, body)
	if rec != nil {
		s.m.bytes.WithLabelValues(source).Add(float64(rec.Written() - before))
	}
	if guard != nil && guard.err != nil {
		s.log.LogAttrs(r.Context(), slog.LevelWarn, "blob read failed mid-response; aborting",
			slog.String("digest", c.Digest.String()), slog.String("source", c.Source),
			slog.String("err", guard.err.Error()))
		panic(http.ErrAbortHandler)
	}
}

// readGuard remembers the first read error (other than EOF) of a body.
type readGuard struct {
	rs  io.ReadSeeker
	err error
}

func (g *readGuard) Read(p []byte) (int, error) {
	n, err := g.rs.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && g.err == nil {
		g.err = err
	}
	return n, err
}

func (g *readGuard) Seek(off int64, whence int) (int64, error) { return g.rs.Seek(off, whence) }

// deleteBlob unlinks d from the repository (the file goes when no link is left).
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, name node.Name, d digest.Digest) {
	if err := s.store.Unlink(r.Context(), s.key(name), d); err != nil {
		s.fail(w, r, classify(err, CodeBlobUnknown))
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// linkBlob links an existing blob into a repository; BLOB_UNKNOWN if absent.
func (s *Server) linkBlob(r *http.Request, key string, d digest.Digest) error {
	if err := s.store.Link(r.Context(), key, d); err != nil {
		if errors.Is(err, blobstore.ErrNotFound) {
			return apiError(CodeBlobUnknown, map[string]string{"digest": d.String()}).wrap(err)
		}
		return err
	}
	return nil
}
