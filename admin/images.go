package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// ImagesPath is the root of the images API:
//
//	GET  /api/v1/images                 list ([]Image)
//	GET  /api/v1/images/inspect?ref=REF one image with its blobs (Image)
//	POST /api/v1/images/rm              {"refs":[…]} → []RemoveResult
//	POST /api/v1/images/pin             {"refs":[…]} → []PinResult
//	POST /api/v1/images/unpin           {"refs":[…]} → []PinResult
//	POST /api/v1/images/missing         {"refs":[…],"platform":"os/arch"} → []MissingResult
//
// rm, pin and unpin resolve every reference first and change nothing when
// one fails. Errors are {"errors":[{"code":…,"message":…}]}.
const ImagesPath = "/api/v1/images"

// Image is one row of `imgmesh images ls`, or an image inspected.
type Image struct {
	Ref        string    `json:"ref"`
	Repository string    `json:"repository"`
	Tag        string    `json:"tag,omitempty"`
	Digest     string    `json:"digest"`
	MediaType  string    `json:"media_type"`
	Platforms  []string  `json:"platforms,omitempty"`
	Size       int64     `json:"size"`    // bytes the image names
	Present    int64     `json:"present"` // of which held here
	Complete   bool      `json:"complete"`
	Pinned     bool      `json:"pinned"`
	LastAccess time.Time `json:"last_access"`
	// Inspect only.
	Tags  []string    `json:"tags,omitempty"`
	Blobs []ImageBlob `json:"blobs,omitempty"`
}

// ImageBlob is one manifest or blob an inspected image names.
type ImageBlob struct {
	Digest   string `json:"digest"`
	Manifest bool   `json:"manifest,omitempty"`
	Size     int64  `json:"size"` // as stored; 0 when absent and unknown
	Present  bool   `json:"present"`
}

// RemoveResult is what `images rm` did to one reference.
type RemoveResult struct {
	Ref      string   `json:"ref"`
	Digest   string   `json:"digest"`
	Untagged []string `json:"untagged,omitempty"`
	Removed  bool     `json:"removed"` // false: another tag still names it
	Shared   bool     `json:"shared"`  // the content stays: another image or a pin uses it
	Unpinned bool     `json:"unpinned,omitempty"`
	Blobs    int      `json:"blobs_deleted"`
	Bytes    int64    `json:"bytes_deleted"`
}

// PinResult is one reference pinned or unpinned.
type PinResult struct {
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
	Pinned bool   `json:"pinned"`
}

// MissingResult says whether one reference is complete here, and if not why.
type MissingResult struct {
	Ref          string   `json:"ref"`
	Digest       string   `json:"digest,omitempty"`
	Complete     bool     `json:"complete"`
	Reason       string   `json:"reason,omitempty"` // "tag unknown", "manifest unknown", "blobs missing"
	Missing      []string `json:"missing,omitempty"`
	MissingBytes int64    `json:"missing_bytes,omitempty"` // as far as the manifests present tell
}

// ImagesOptions wires the images API to the node.
type ImagesOptions struct {
	// Store is the node's announcing store: what rm deletes is withdrawn
	// from the fleet.
	Store blobstore.Store
	// DefaultRegistry is the registry requests without ?ns= go to (the
	// first upstream); "" when the node has none.
	DefaultRegistry string
	// Busy reports blobs being fetched or served (rm leaves them to a later
	// eviction); nil: none.
	Busy   func(digest.Digest) bool
	Logger *slog.Logger
}

// maxRefs bounds the references of one request.
const maxRefs = 10000

var platformPattern = regexp.MustCompile(`^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$`)

type imagesAPI struct{ o ImagesOptions }

// ImagesHandler serves ImagesPath.
func ImagesHandler(o ImagesOptions) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	h := &imagesAPI{o}
	mux := http.NewServeMux()
	noSuchPath(mux, ImagesPath+"/", "")
	handle(mux, http.MethodGet, ImagesPath, h.list)
	handle(mux, http.MethodGet, ImagesPath+"/inspect", h.inspect)
	handle(mux, http.MethodPost, ImagesPath+"/rm", h.batch(h.remove))
	handle(mux, http.MethodPost, ImagesPath+"/pin", h.batch(h.pin(true)))
	handle(mux, http.MethodPost, ImagesPath+"/unpin", h.batch(h.pin(false)))
	handle(mux, http.MethodPost, ImagesPath+"/missing", h.missing)
	return mux
}

// apiError is an error with its code and HTTP status.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func badRequest(code, format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, code, fmt.Sprintf(format, args...)}
}

func (h *imagesAPI) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case errors.Is(err, blobstore.ErrNotFound):
		ae = &apiError{http.StatusNotFound, "MANIFEST_UNKNOWN", err.Error()}
	default:
		h.o.Logger.Warn("images API", "path", r.URL.Path, "err", err)
		ae = &apiError{http.StatusInternalServerError, "UNKNOWN", err.Error()}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ae.status)
	_ = json.NewEncoder(w).Encode(map[string]any{"errors": []map[string]string{{"code": ae.code, "message": ae.message}}})
}

func (h *imagesAPI) list(w http.ResponseWriter, r *http.Request) {
	c, err := blobstore.LoadCatalog(r.Context(), h.o.Store)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []Image{}
	for _, img := range c.Images {
		if len(img.Tags) == 0 {
			out = append(out, row(img, ""))
		}
		for _, t := range img.Tags {
			out = append(out, row(img, t))
		}
	}
	writeJSON(w, out)
}

// row is img as listed under tag ("" = by digest).
func row(img blobstore.Image, tag string) Image {
	ref := img.Repo + "@" + img.Digest.String()
	if tag != "" {
		ref = img.Repo + ":" + tag
	}
	return Image{Ref: ref, Repository: img.Repo, Tag: tag, Digest: img.Digest.String(), MediaType: img.MediaType,
		Platforms: img.Platforms, Size: img.Size, Present: img.Present, Complete: img.Complete(),
		Pinned: img.Pinned, LastAccess: img.Accessed}
}

// resolved is a reference found in the store.
type resolved struct {
	ref ImageRef
	raw string
	key string // store key (registry/repository)
	d   digest.Digest
}

// resolve finds raw in the store: a digest by its manifest record, a tag
// by the tag index, under each key the reference may mean.
func (h *imagesAPI) resolve(ctx context.Context, raw string) (resolved, error) {
	ref, err := ParseImageRef(raw)
	if err != nil {
		return resolved{}, badRequest("NAME_INVALID", "%v", err)
	}
	for _, key := range keys(ref, h.o.DefaultRegistry) {
		if ref.Digest != "" {
			if _, err := h.o.Store.GetManifest(ctx, key, ref.Digest); err == nil {
				return resolved{ref, raw, key, ref.Digest}, nil
			}
			continue
		}
		d, err := h.o.Store.Resolve(ctx, key, ref.Tag)
		if err == nil {
			return resolved{ref, raw, key, d}, nil
		}
		if !errors.Is(err, blobstore.ErrNotFound) {
			return resolved{}, err
		}
	}
	if ref.Digest != "" {
		return resolved{ref: ref, raw: raw}, fmt.Errorf("image %s: manifest unknown: %w", raw, blobstore.ErrNotFound)
	}
	return resolved{ref: ref, raw: raw}, fmt.Errorf("image %s: tag unknown: %w", raw, blobstore.ErrNotFound)
}

func (h *imagesAPI) inspect(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	raw := r.URL.Query().Get("ref")
	if raw == "" {
		h.fail(w, r, badRequest("NAME_INVALID", "inspect needs ?ref=IMAGE"))
		return
	}
	res, err := h.resolve(ctx, raw)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	c, err := blobstore.LoadCatalog(ctx, h.o.Store)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	img := c.Describe(ctx, h.o.Store, res.key, res.d)
	out := row(img, res.ref.Tag)
	if res.ref.Digest != "" {
		out = row(img, "")
	}
	out.Tags = img.Tags
	for _, d := range c.Closure(res.d, "") {
		size, ok := c.Has(d)
		out.Blobs = append(out.Blobs, ImageBlob{Digest: d.String(), Manifest: c.IsManifest(d), Size: size, Present: ok})
	}
	writeJSON(w, out)
}

// refsBody is the body of rm, pin, unpin and missing.
type refsBody struct {
	Refs     []string `json:"refs"`
	Platform string   `json:"platform,omitempty"`
}

func readRefs(r *http.Request) (refsBody, error) {
	var b refsBody
	if err := requireJSON(r); err != nil {
		return b, &apiError{http.StatusUnsupportedMediaType, "UNSUPPORTED_MEDIA_TYPE", err.Error()}
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 4<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, badRequest("BAD_REQUEST", "body: want {\"refs\":[\"IMAGE\",…]}: %v", err)
	}
	if len(b.Refs) == 0 || len(b.Refs) > maxRefs {
		return b, badRequest("BAD_REQUEST", "want 1 to %d references, got %d", maxRefs, len(b.Refs))
	}
	return b, nil
}

// batch resolves every reference of the body, then runs op on each; a
// reference that does not resolve fails the request before any change.
func (h *imagesAPI) batch(op func(context.Context, resolved) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		b, err := readRefs(r)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		var all []resolved
		for _, raw := range b.Refs {
			res, err := h.resolve(r.Context(), raw)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			all = append(all, res)
		}
		out := []any{}
		for _, res := range all {
			v, err := op(r.Context(), res)
			if err != nil {
				h.fail(w, r, fmt.Errorf("image %s: %w", res.raw, err))
				return
			}
			out = append(out, v)
		}
		writeJSON(w, out)
	}
}

func (h *imagesAPI) remove(ctx context.Context, res resolved) (any, error) {
	tag := res.ref.Tag
	if res.ref.Digest != "" {
		tag = "" // by digest: every tag of the repository that names it
	}
	st, err := blobstore.RemoveImage(ctx, h.o.Store, res.key, tag, res.d, h.o.Busy)
	if err != nil {
		return nil, err
	}
	h.o.Logger.Info("image removed", "repo", res.key, "digest", res.d, "untagged", st.Untagged,
		"removed", st.Removed, "blobs", st.Blobs, "bytes", st.Bytes)
	return RemoveResult{Ref: res.raw, Digest: res.d.String(), Untagged: st.Untagged, Removed: st.Removed,
		Shared: st.Shared, Unpinned: st.Unpinned, Blobs: st.Blobs, Bytes: st.Bytes}, nil
}

func (h *imagesAPI) pin(on bool) func(context.Context, resolved) (any, error) {
	return func(ctx context.Context, res resolved) (any, error) {
		var err error
		if on {
			err = h.o.Store.Pin(ctx, res.d)
		} else if err = h.o.Store.Unpin(ctx, res.d); errors.Is(err, blobstore.ErrNotFound) {
			err = &apiError{http.StatusConflict, "NOT_PINNED", fmt.Sprintf("%s is not pinned", res.d)}
		}
		if err != nil {
			return nil, err
		}
		return PinResult{Ref: res.raw, Digest: res.d.String(), Pinned: on}, nil
	}
}

func (h *imagesAPI) missing(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	b, err := readRefs(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if b.Platform != "" {
		if !platformPattern.MatchString(b.Platform) {
			h.fail(w, r, badRequest("BAD_REQUEST", "platform %q: want os/arch or os/arch/variant", b.Platform))
			return
		}
	}
	c, err := blobstore.LoadCatalog(ctx, h.o.Store)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []MissingResult{}
	for _, raw := range b.Refs {
		res, err := h.resolve(ctx, raw)
		var ae *apiError
		switch {
		case errors.As(err, &ae):
			h.fail(w, r, err)
			return
		case errors.Is(err, blobstore.ErrNotFound) && res.ref.Digest != "":
			out = append(out, MissingResult{Ref: raw, Digest: res.ref.Digest.String(), Reason: "manifest unknown"})
			continue
		case errors.Is(err, blobstore.ErrNotFound):
			out = append(out, MissingResult{Ref: raw, Reason: "tag unknown"})
			continue
		case err != nil:
			h.fail(w, r, err)
			return
		}
		m := MissingResult{Ref: raw, Digest: res.d.String(), Complete: true}
		if !c.OffersPlatform(res.d, b.Platform) {
			m.Complete, m.Reason = false, "no manifest for platform "+b.Platform
			out = append(out, m)
			continue
		}
		for _, d := range c.Closure(res.d, b.Platform) {
			if _, ok := c.Has(d); !ok {
				m.Complete = false
				m.Missing = append(m.Missing, d.String())
				m.MissingBytes += c.SizeOf(d)
			}
		}
		if !m.Complete {
			m.Reason = "blobs missing"
		}
		out = append(out, m)
	}
	writeJSON(w, out)
}
