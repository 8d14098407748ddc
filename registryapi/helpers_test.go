package registryapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/blobstore"
)

// result is a response read whole.
type result struct {
	status int
	header http.Header
	body   []byte
}

// code is the first OCI error code of the body, "" if none.
func (r result) code() string {
	var eb errorBody
	if json.Unmarshal(r.body, &eb) != nil || len(eb.Errors) == 0 {
		return ""
	}
	return string(eb.Errors[0].Code)
}

// do sends one request; hdr is name, value pairs.
// testClient has its own transport: httptest.Server.Close closes the idle
// connections of http.DefaultTransport, which would break parallel tests.
var testClient = &http.Client{Transport: &http.Transport{}}

func do(t *testing.T, method, url string, body []byte, hdr ...string) result {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return result{status: resp.StatusCode, header: resp.Header, body: b}
}

// want fails unless r has status and (when code != "") that error code.
func want(t *testing.T, r result, status int, code string) {
	t.Helper()
	if r.status != status || (code != "" && r.code() != code) {
		t.Fatalf("got %d %s (%s), want %d %s", r.status, r.code(), r.body, status, code)
	}
	if code != "" && r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("error response Content-Type %q, want application/json", r.header.Get("Content-Type"))
	}
}

// pushBlob stores b in repo with a monolithic upload.
func pushBlob(t *testing.T, ts *testServer, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	r := do(t, "POST", ts.URL+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), b)
	want(t, r, http.StatusCreated, "")
	return d
}

// pushManifest PUTs body (an OCI image manifest) by ref.
func pushManifest(t *testing.T, ts *testServer, repo, ref string, body []byte, mediaType string) result {
	t.Helper()
	return do(t, "PUT", ts.URL+"/v2/"+repo+"/manifests/"+ref, body, "Content-Type", mediaType)
}

// snapshot is what a client could observe of a store.
type snapshot struct {
	blobs []string
	bytes int64
}

func snap(t *testing.T, s blobstore.Store) snapshot {
	t.Helper()
	var out snapshot
	err := s.Walk(context.Background(), func(i blobstore.Info) error {
		out.blobs = append(out.blobs, i.Digest.String())
		out.bytes += i.Size
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out.blobs)
	return out
}

func (a snapshot) equal(b snapshot) bool {
	return a.bytes == b.bytes && slices.Equal(a.blobs, b.blobs)
}
