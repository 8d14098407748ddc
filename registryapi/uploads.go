package registryapi

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// startUpload serves POST /v2/<name>/blobs/uploads/: a cross-repository
// mount (?mount=&from=), a monolithic upload (?digest=) or a new session.
func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, rt route) {
	name := nodeName(r, rt)
	key := s.key(name)
	q := r.URL.Query()
	if mount := q.Get("mount"); mount != "" {
		mounted, err := s.mount(r, name, key, mount, q.Get("from"))
		if err != nil {
			s.fail(w, r, classify(err, CodeBlobUnknown))
			return
		}
		if mounted != "" {
			s.blobCreated(w, r, rt.name, mounted)
			return
		}
		// Not mountable: fall back to a plain upload session (spec).
	} else if dg := q.Get("digest"); dg != "" {
		s.monolithic(w, r, rt, key, dg)
		return
	}
	sess, err := s.uploads.start(r.Context(), s.store, rt.name, key)
	if err != nil {
		s.fail(w, r, classify(err, CodeBlobUploadUnknown))
		return
	}
	s.uploadHeaders(w, r, sess)
	w.WriteHeader(http.StatusAccepted)
}

// mount links blob mount of repository from (any repository when from is
// empty) into key. It returns "" when the blob cannot be mounted.
func (s *Server) mount(r *http.Request, name node.Name, key, mount, from string) (digest.Digest, error) {
	d, perr := parseDigest(mount)
	if perr != nil {
		return "", nil
	}
	ctx := r.Context()
	if from != "" {
		if checkName(from) != nil {
			return "", nil
		}
		ok, err := s.store.Linked(ctx, s.key(node.Name{NS: name.NS, Repo: from}), d)
		if err != nil || !ok {
			return "", err
		}
	} else if _, err := s.store.Stat(ctx, d); err != nil {
		if errors.Is(err, blobstore.ErrNotFound) {
			return "", nil
		}
		return "", err
	}
	if err := s.store.Link(ctx, key, d); err != nil {
		if errors.Is(err, blobstore.ErrNotFound) { // deleted meanwhile
			return "", nil
		}
		return "", err
	}
	return d, nil
}

// monolithic stores the POST body as blob dg in one request.
func (s *Server) monolithic(w http.ResponseWriter, r *http.Request, rt route, key, dg string) {
	d, perr := parseDigest(dg)
	if perr != nil {
		s.fail(w, r, perr)
		return
	}
	wr, err := s.store.NewWriter(r.Context())
	if err != nil {
		s.fail(w, r, classify(err, CodeBlobUnknown))
		return
	}
	if err := receive(r, wr, r.ContentLength); err != nil {
		_ = wr.Cancel()
		s.fail(w, r, classify(err, CodeBlobUploadInvalid))
		return
	}
	if err := s.commit(r, wr, key, d); err != nil {
		s.fail(w, r, classify(err, CodeBlobUploadInvalid))
		return
	}
	s.blobCreated(w, r, rt.name, d)
}

// upload serves GET (status), PATCH (chunk), PUT (finish) and DELETE
// (cancel) on /v2/<name>/blobs/uploads/<id>.
func (s *Server) upload(w http.ResponseWriter, r *http.Request, rt route) {
	sess, aerr := s.uploads.acquire(rt.ref, rt.name)
	if aerr != nil {
		s.fail(w, r, aerr)
		return
	}
	defer s.uploads.release(sess)
	switch r.Method {
	case http.MethodGet:
		s.uploadHeaders(w, r, sess)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		s.uploads.fail(sess)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		if !s.chunk(w, r, sess) {
			return
		}
		s.uploadHeaders(w, r, sess)
		w.WriteHeader(http.StatusAccepted)
	case http.MethodPut:
		d, perr := parseDigest(r.URL.Query().Get("digest"))
		if perr != nil {
			// Nothing of this request went in: the session stays, and the
			// client may PUT again with a digest (as distribution does).
			s.uploadHeaders(w, r, sess)
			s.fail(w, r, perr)
			return
		}
		if !s.chunk(w, r, sess) {
			return
		}
		s.uploads.end(sess)
		if err := s.commit(r, sess.w, sess.key, d); err != nil {
			s.fail(w, r, classify(err, CodeBlobUploadInvalid))
			return
		}
		s.blobCreated(w, r, rt.name, d)
	}
}

// chunk appends the request body to the session. A request refused before
// its body is read (a malformed Content-Range, one that does not start where
// the upload ends: 416; a Content-Length that disagrees with it: 400) keeps
// the session as it was. A body that does not match its declared length
// once read fails the session (400): some of it may have gone in.
func (s *Server) chunk(w http.ResponseWriter, r *http.Request, sess *session) bool {
	want := r.ContentLength
	if cr := r.Header.Get("Content-Range"); cr != "" {
		start, end, ok := parseContentRange(cr)
		reason := ""
		switch {
		case !ok:
			reason = "want Content-Range: START-END"
		case start != sess.w.Size():
			reason = fmt.Sprintf("upload has %d bytes; chunks must follow in order", sess.w.Size())
		}
		if reason != "" {
			s.uploadHeaders(w, r, sess)
			s.fail(w, r, apiError(CodeRangeInvalid, map[string]string{"contentRange": cr, "reason": reason}))
			return false
		}
		n := end - start + 1
		if want >= 0 && want != n {
			s.uploadHeaders(w, r, sess)
			s.fail(w, r, apiError(CodeSizeInvalid, fmt.Sprintf("Content-Length %d does not match Content-Range %s", want, cr)))
			return false
		}
		want = n
	}
	if want == 0 {
		return true
	}
	if err := receive(r, sess.w, want); err != nil {
		s.uploads.fail(sess)
		s.fail(w, r, classify(err, CodeBlobUploadInvalid))
		return false
	}
	return true
}

// commit verifies and publishes the writer's bytes as d, then links d into key.
func (s *Server) commit(r *http.Request, wr blobstore.Writer, key string, d digest.Digest) error {
	if _, err := wr.Commit(r.Context(), -1, d); err != nil {
		_ = wr.Cancel()
		return err
	}
	return s.linkBlob(r, key, d)
}

// storeWriter remembers a failed write into the store, so that receive
// can tell it from a failed read of the request body.
type storeWriter struct {
	w   io.Writer
	err error
}

func (s *storeWriter) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err != nil && s.err == nil {
		s.err = err
	}
	return n, err
}

// receive copies the request body into wr: exactly want bytes when want ≥ 0
// (a shorter or longer body is SIZE_INVALID), else until EOF.
func receive(r *http.Request, wr io.Writer, want int64) error {
	sw := &storeWriter{w: wr}
	var n int64
	var err error
	if want < 0 {
		_, err = io.Copy(sw, r.Body)
	} else {
		n, err = io.CopyN(sw, r.Body, want)
	}
	if sw.err != nil {
		return sw.err // the node's side failed (a full disk), not the body
	}
	if want < 0 {
		if err != nil {
			return apiError(CodeBlobUploadInvalid, "reading request body failed").wrap(err)
		}
		return nil
	}
	if n < want {
		if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return apiError(CodeSizeInvalid, fmt.Sprintf("body has %d bytes, %d declared", n, want)).wrap(err)
		}
		return apiError(CodeBlobUploadInvalid, "reading request body failed").wrap(err)
	}
	var extra [1]byte
	if k, _ := io.ReadFull(r.Body, extra[:]); k > 0 {
		return apiError(CodeSizeInvalid, fmt.Sprintf("body longer than %d bytes declared", want))
	}
	return nil
}

// parseContentRange parses an upload Content-Range: "start-end", optionally
// prefixed "bytes " or "bytes=".
func parseContentRange(h string) (start, end int64, ok bool) {
	h = strings.TrimSpace(h)
	if rest, found := strings.CutPrefix(h, "bytes"); found {
		h = strings.TrimLeft(rest, " =")
	}
	if i := strings.IndexByte(h, '/'); i >= 0 { // "a-b/total": total is not needed
		h = h[:i]
	}
	first, last, found := strings.Cut(h, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := parseOffset(first)
	end, err2 := parseOffset(last)
	if err1 != nil || err2 != nil || end < start || end == math.MaxInt64 { // end+1 must not overflow
		return 0, 0, false
	}
	return start, end, true
}

// uploadHeaders sets the headers every upload response carries.
func (s *Server) uploadHeaders(w http.ResponseWriter, r *http.Request, sess *session) {
	h := w.Header()
	h.Set("Location", location(r, "/v2/"+sess.name+"/blobs/uploads/"+sess.id))
	end := sess.w.Size() - 1
	h.Set("Range", "0-"+itoa(max(end, 0)))
	h.Set("Docker-Upload-UUID", sess.id)
	h.Set("Blob-Upload-Session-ID", sess.id)
	h.Set("Content-Length", "0")
}

// blobCreated answers 201 for a blob now stored and linked.
func (s *Server) blobCreated(w http.ResponseWriter, r *http.Request, name string, d digest.Digest) {
	h := w.Header()
	h.Set("Location", location(r, "/v2/"+name+"/blobs/"+d.String()))
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// location is path plus the request's ns parameter, so that follow-up
// requests address the same registry.
func location(r *http.Request, path string) string {
	if ns := r.URL.Query().Get("ns"); ns != "" {
		return path + "?ns=" + url.QueryEscape(ns)
	}
	return path
}
