package registryapi

import (
	"bytes"
	"net/http"
	"testing"
)

// TestRangeIgnoredOrUnsatisfiable: a Range header of another unit or with a
// malformed range set is ignored (RFC 9110 §14.2): 200 with the whole blob.
// A reversed range (which the OCI conformance suite wants refused) and a
// range set that no byte of the blob satisfies are 416.
func TestRangeIgnoredOrUnsatisfiable(t *testing.T) {
	t.Parallel()
	ts := newTestServer(t, nil)
	blob := []byte("0123456789abcdef")
	u := ts.URL + "/v2/app/blobs/" + pushBlob(t, ts, "app", blob).String()

	for _, h := range []string{"items=0-1", "bytes=abc", "bytes=a-b", "bytes=", "bytes 0-1", "bytes=1-2-3"} {
		r := do(t, "GET", u, nil, "Range", h)
		want(t, r, http.StatusOK, "")
		if !bytes.Equal(r.body, blob) || r.header.Get("Content-Range") != "" {
			t.Fatalf("Range %q: got %q, Content-Range %q; want the whole blob", h, r.body, r.header.Get("Content-Range"))
		}
	}
	for _, h := range []string{"bytes=16-", "bytes=100-200", "bytes=-0", "bytes=10-5"} {
		r := do(t, "GET", u, nil, "Range", h)
		want(t, r, http.StatusRequestedRangeNotSatisfiable, "RANGE_INVALID")
		if r.header.Get("Content-Range") != "bytes */16" {
			t.Fatalf("Range %q: 416 Content-Range %q", h, r.header.Get("Content-Range"))
		}
	}
	// A valid range is still served, whatever the case of its unit.
	r := do(t, "GET", u, nil, "Range", "Bytes=2-4")
	want(t, r, http.StatusPartialContent, "")
	if string(r.body) != "234" || r.header.Get("Content-Range") != "bytes 2-4/16" {
		t.Fatalf("Bytes=2-4: %q, Content-Range %q", r.body, r.header.Get("Content-Range"))
	}
}
