package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"

	"github.com/imgmesh/imgmesh/prefetch"
)

// PrefetchPath takes new orders (POST) and shows one (GET PrefetchPath/ID).
const PrefetchPath = "/api/v1/prefetch"

// maxPrefetchBody bounds a POSTed order.
const maxPrefetchBody = 64 << 10

// Prefetcher makes and shows prefetch orders; *prefetch.Manager implements it.
type Prefetcher interface {
	Create(ctx context.Context, r prefetch.Request) (prefetch.Order, error)
	Status(ctx context.Context, id string) (prefetch.Status, error)
}

// PrefetchCreated answers a POST.
type PrefetchCreated struct {
	ID    string         `json:"id"`
	Order prefetch.Order `json:"order"`
}

// Error codes of the prefetch API, in the OCI error JSON shape.
const (
	CodeOrderInvalid = "ORDER_INVALID"
	CodeOrderUnknown = "ORDER_UNKNOWN"
	CodeInternal     = "INTERNAL"
	CodeNotFound     = "NOT_FOUND"   // no such path under /api/v1/
	CodeUnsupported  = "UNSUPPORTED" // a method the path does not take
)

// PrefetchHandler serves PrefetchPath (mount it at PrefetchPath and
// PrefetchPath+"/"):
//
//	POST PrefetchPath        body: prefetch.Request → 201 PrefetchCreated
//	GET  PrefetchPath/{id}   → 200 prefetch.Status (the order, the selected
//	                           members and their reports)
//
// Errors are {"errors":[{"code":…,"message":…}]}.
func PrefetchHandler(p Prefetcher, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	noSuchPath(mux, PrefetchPath+"/", " (want "+PrefetchPath+"/ORDER)")
	handle(mux, http.MethodPost, PrefetchPath, func(w http.ResponseWriter, r *http.Request) {
		if err := requireJSON(r); err != nil {
			writeError(w, http.StatusUnsupportedMediaType, CodeOrderInvalid, err.Error())
			return
		}
		var req prefetch.Request
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxPrefetchBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, CodeOrderInvalid, fmt.Sprintf("order body: %v", err))
			return
		}
		o, err := p.Create(r.Context(), req)
		switch {
		case errors.Is(err, prefetch.ErrBadOrder):
			writeError(w, http.StatusBadRequest, CodeOrderInvalid, err.Error())
			return
		case err != nil:
			log.Error("prefetch order not made", "err", err)
			writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
			return
		}
		w.Header().Set("Location", PrefetchPath+"/"+o.ID)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(PrefetchCreated{ID: o.ID, Order: o})
	})
	handle(mux, http.MethodGet, PrefetchPath+"/{id}", func(w http.ResponseWriter, r *http.Request) {
		st, err := p.Status(r.Context(), r.PathValue("id"))
		switch {
		case errors.Is(err, prefetch.ErrUnknownOrder):
			writeError(w, http.StatusNotFound, CodeOrderUnknown, err.Error())
			return
		case err != nil:
			writeError(w, http.StatusInternalServerError, CodeInternal, err.Error())
			return
		}
		writeJSON(w, st)
	})
	return mux
}

// ErrorBody is the OCI error JSON shape.
type ErrorBody struct {
	Errors []ErrorEntry `json:"errors"`
}

// ErrorEntry is one error of an ErrorBody.
type ErrorEntry struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorBody{Errors: []ErrorEntry{{Code: code, Message: msg}}})
}

// requireJSON refuses a body that is not declared JSON. A web page may send
// a cross-site POST without asking first only as a form or text/plain: a
// page open on the device must not remove, pin or roll out images through
// a node on 127.0.0.1.
func requireJSON(r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return fmt.Errorf("body of type %q: want application/json", r.Header.Get("Content-Type"))
	}
	return nil
}
