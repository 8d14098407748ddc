package registryapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/node"
)

// Code is an OCI distribution-spec error code.
type Code string

// The error codes this server answers with. The first fourteen are the
// distribution-spec's; the rest follow the distribution registry.
const (
	CodeBlobUnknown         Code = "BLOB_UNKNOWN"
	CodeBlobUploadInvalid   Code = "BLOB_UPLOAD_INVALID"
	CodeBlobUploadUnknown   Code = "BLOB_UPLOAD_UNKNOWN"
	CodeDigestInvalid       Code = "DIGEST_INVALID"
	CodeManifestBlobUnknown Code = "MANIFEST_BLOB_UNKNOWN"
	CodeManifestInvalid     Code = "MANIFEST_INVALID"
	CodeManifestUnknown     Code = "MANIFEST_UNKNOWN"
	CodeNameInvalid         Code = "NAME_INVALID"
	CodeNameUnknown         Code = "NAME_UNKNOWN"
	CodeSizeInvalid         Code = "SIZE_INVALID"
	CodeUnauthorized        Code = "UNAUTHORIZED"
	CodeDenied              Code = "DENIED"
	CodeUnsupported         Code = "UNSUPPORTED"
	CodeTooManyRequests     Code = "TOOMANYREQUESTS"
	CodeRangeInvalid        Code = "RANGE_INVALID"
	CodePaginationInvalid   Code = "PAGINATION_NUMBER_INVALID"
	CodeUnavailable         Code = "UNAVAILABLE"
	CodeUnknown             Code = "UNKNOWN"
)

// codeInfo is the default HTTP status and message of each code.
var codeInfo = map[Code]struct {
	status  int
	message string
}{
	CodeBlobUnknown:         {http.StatusNotFound, "blob unknown to registry"},
	CodeBlobUploadInvalid:   {http.StatusBadRequest, "blob upload invalid"},
	CodeBlobUploadUnknown:   {http.StatusNotFound, "blob upload unknown to registry"},
	CodeDigestInvalid:       {http.StatusBadRequest, "provided digest did not match uploaded content"},
	CodeManifestBlobUnknown: {http.StatusNotFound, "manifest references a manifest or blob unknown to registry"},
	CodeManifestInvalid:     {http.StatusBadRequest, "manifest invalid"},
	CodeManifestUnknown:     {http.StatusNotFound, "manifest unknown to registry"},
	CodeNameInvalid:         {http.StatusBadRequest, "invalid repository name"},
	CodeNameUnknown:         {http.StatusNotFound, "repository name not known to registry"},
	CodeSizeInvalid:         {http.StatusBadRequest, "provided length did not match content length"},
	CodeUnauthorized:        {http.StatusUnauthorized, "authentication required"},
	CodeDenied:              {http.StatusForbidden, "requested access to the resource is denied"},
	CodeUnsupported:         {http.StatusMethodNotAllowed, "the operation is unsupported"},
	CodeTooManyRequests:     {http.StatusTooManyRequests, "too many requests"},
	CodeRangeInvalid:        {http.StatusRequestedRangeNotSatisfiable, "invalid content range"},
	CodePaginationInvalid:   {http.StatusBadRequest, "invalid number of results requested"},
	CodeUnavailable:         {http.StatusServiceUnavailable, "service unavailable"},
	CodeUnknown:             {http.StatusInternalServerError, "unknown error"},
}

// Error is an API error: a code, the HTTP status it is sent with, and a
// detail for the client. It wraps the cause for logs and errors.Is.
type Error struct {
	Code   Code
	Status int
	Detail any
	cause  error
}

func (e *Error) Error() string {
	msg := string(e.Code)
	if e.Detail != nil {
		msg += fmt.Sprintf(": %v", e.Detail)
	}
	if e.cause != nil {
		msg += ": " + e.cause.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.cause }

// apiError builds an Error with the code's default status; detail is shown
// to the client.
func apiError(code Code, detail any) *Error {
	return &Error{Code: code, Status: codeInfo[code].status, Detail: detail}
}

// withStatus overrides the HTTP status (e.g. 404 UNSUPPORTED for unknown routes).
func (e *Error) withStatus(status int) *Error {
	e.Status = status
	return e
}

// wrap records the cause of e.
func (e *Error) wrap(cause error) *Error {
	e.cause = cause
	return e
}

// classify maps err to an API error. unknown is the code for a missing
// thing in the caller's context (BLOB_UNKNOWN, MANIFEST_UNKNOWN, ...).
func classify(err error, unknown Code) *Error {
	var ae *Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, blobstore.ErrNotFound):
		return apiError(unknown, nil).wrap(err)
	case errors.Is(err, blobstore.ErrUnsupportedDigest):
		return apiError(CodeDigestInvalid, "unsupported digest algorithm").wrap(err)
	case errors.Is(err, blobstore.ErrDigestMismatch):
		return apiError(CodeDigestInvalid, "content does not match digest").wrap(err)
	case errors.Is(err, blobstore.ErrSizeMismatch):
		return apiError(CodeSizeInvalid, "content does not match size").wrap(err)
	case errors.Is(err, blobstore.ErrNoSpace):
		return apiError(CodeUnavailable, "node storage full").withStatus(http.StatusInsufficientStorage).wrap(err)
	case errors.Is(err, node.ErrUpstream):
		return apiError(CodeUnavailable, "upstream registry failed").wrap(err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return apiError(CodeUnavailable, "request cancelled or timed out").wrap(err)
	default:
		return apiError(CodeUnknown, nil).wrap(err)
	}
}

type errorBody struct {
	Errors []errorEntry `json:"errors"`
}

type errorEntry struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

// writeError renders err as the OCI error JSON with its status. Headers
// already set on w (Location, Range, ...) are kept.
func writeError(w http.ResponseWriter, r *http.Request, err *Error) {
	body, mErr := json.Marshal(errorBody{Errors: []errorEntry{{
		Code:    err.Code,
		Message: codeInfo[err.Code].message,
		Detail:  err.Detail,
	}}})
	if mErr != nil { // a detail that does not marshal: drop it
		body, _ = json.Marshal(errorBody{Errors: []errorEntry{{Code: err.Code, Message: codeInfo[err.Code].message}}})
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Del("Docker-Content-Digest")
	h.Del("ETag")
	h.Del("Cache-Control")
	w.WriteHeader(err.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
