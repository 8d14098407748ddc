package registryapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// manifest serves GET, HEAD, PUT and DELETE /v2/<name>/manifests/<reference>.
func (s *Server) manifest(w http.ResponseWriter, r *http.Request, rt route) {
	ref, perr := parseReference(rt.ref)
	if perr != nil {
		s.fail(w, r, perr)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		s.getManifest(w, r, rt, ref)
	case http.MethodPut:
		s.putManifest(w, r, rt, ref)
	case http.MethodDelete:
		s.deleteManifest(w, r, rt, ref)
	}
}

func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, rt route, ref reference) {
	head := r.Method == http.MethodHead
	m, err := s.src.Manifest(r.Context(), nodeName(r, rt), ref.String(), head)
	if err != nil {
		s.fail(w, r, classify(err, CodeManifestUnknown))
		return
	}
	size := m.Size
	if !head {
		if m.Body == nil {
			s.fail(w, r, apiError(CodeUnknown, "source returned no manifest body"))
			return
		}
		size = int64(len(m.Body))
	}
	h := w.Header()
	h.Set("Content-Type", m.MediaType)
	h.Set("Docker-Content-Digest", m.Digest.String())
	h.Set("ETag", `"`+m.Digest.String()+`"`)
	h.Set("Content-Length", itoa(size))
	w.WriteHeader(http.StatusOK)
	if !head {
		_, _ = w.Write(m.Body)
	}
}

// putManifest stores a pushed manifest: bounded, a well-formed manifest of a
// supported media type (parseManifest), hashing to the digest it is pushed
// by. Blobs it references need not be present (sparse and non-distributable
// manifests are accepted, as the conformance suite expects); a missing
// subject is fine.
func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, rt route, ref reference) {
	ctx := r.Context()
	tooBig := apiError(CodeManifestInvalid, fmt.Sprintf("manifest larger than %d bytes", s.maxMan)).withStatus(http.StatusRequestEntityTooLarge)
	if r.ContentLength > s.maxMan {
		s.fail(w, r, tooBig)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.maxMan+1))
	if err != nil {
		s.fail(w, r, apiError(CodeManifestInvalid, "reading manifest failed").wrap(err))
		return
	}
	if int64(len(body)) > s.maxMan {
		s.fail(w, r, tooBig)
		return
	}
	rec, perr := parseManifest(body, r.Header.Get("Content-Type"))
	if perr != nil {
		s.fail(w, r, perr)
		return
	}
	d := ref.digest
	if d == "" {
		d = digest.SHA256.FromBytes(body)
	} else if err := blobstore.Verify(body, -1, d); err != nil {
		s.fail(w, r, classify(err, CodeManifestInvalid))
		return
	}
	rec.Digest = d
	tags := r.URL.Query()["tag"]
	for _, t := range tags {
		if !tagRe.MatchString(t) {
			s.fail(w, r, apiError(CodeManifestInvalid, map[string]string{"tag": t, "reason": "invalid tag"}))
			return
		}
	}
	if ref.tag != "" {
		tags = append([]string{ref.tag}, tags...)
	}
	key := s.key(nodeName(r, rt))
	if err := s.storeManifest(r, key, rec, body, tags); err != nil {
		s.fail(w, r, classify(err, CodeManifestInvalid))
		return
	}
	h := w.Header()
	h.Set("Location", location(r, "/v2/"+rt.name+"/manifests/"+d.String()))
	h.Set("Docker-Content-Digest", d.String())
	if rec.Subject != "" {
		h.Set("OCI-Subject", rec.Subject.String())
	}
	if q := r.URL.Query()["tag"]; len(q) > 0 {
		h.Set("OCI-Tag", strings.Join(q, ", "))
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
	s.log.LogAttrs(ctx, slog.LevelDebug, "manifest pushed", slog.String("repo", key), slog.String("digest", d.String()))
}

// storeManifest writes body as blob rec.Digest (unless present), indexes it
// in key and points tags at it.
func (s *Server) storeManifest(r *http.Request, key string, rec blobstore.Manifest, body []byte, tags []string) error {
	ctx := r.Context()
	if _, err := s.store.Stat(ctx, rec.Digest); err != nil {
		if !errors.Is(err, blobstore.ErrNotFound) {
			return err
		}
		wr, err := s.store.NewWriter(ctx)
		if err != nil {
			return err
		}
		if _, err := wr.Write(body); err != nil {
			_ = wr.Cancel()
			return err
		}
		if _, err := wr.Commit(ctx, int64(len(body)), rec.Digest); err != nil {
			_ = wr.Cancel()
			return err
		}
	}
	if err := s.store.PutManifest(ctx, key, rec); err != nil {
		return err
	}
	for _, t := range tags {
		if err := s.store.Tag(ctx, key, t, rec.Digest); err != nil {
			return err
		}
	}
	return nil
}

// parseManifest validates a pushed manifest and builds its index record
// (everything but the digest). Nothing is stored unless it passes: a manifest
// is kept and served as it is, so a malformed one would fail every pull.
func parseManifest(body []byte, contentType string) (blobstore.Manifest, *Error) {
	invalid := func(reason string, err error) (blobstore.Manifest, *Error) {
		return blobstore.Manifest{}, apiError(CodeManifestInvalid, map[string]string{"reason": reason}).wrap(err)
	}
	var doc manifestDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		return invalid("not a valid manifest: "+err.Error(), err)
	}
	mt, err := manifestMediaType(contentType, doc.MediaType)
	if err != nil {
		return invalid(err.Error(), err)
	}
	if err := checkManifest(doc, mt); err != nil {
		return invalid(err.Error(), err)
	}
	rec, err := blobstore.ParseManifest(body, mt, "")
	if err != nil {
		return invalid(err.Error(), err)
	}
	return rec, nil
}

// deleteManifest deletes a tag (by tag) or a manifest (by digest).
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, rt route, ref reference) {
	ctx := r.Context()
	key := s.key(nodeName(r, rt))
	var err error
	if ref.tag != "" {
		err = s.store.Untag(ctx, key, ref.tag)
	} else if _, err = s.store.GetManifest(ctx, key, ref.digest); err == nil {
		err = s.store.Unlink(ctx, key, ref.digest)
	}
	if err != nil {
		s.fail(w, r, classify(err, CodeManifestUnknown))
		return
	}
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}
