package admin_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/blobstore"
)

// TestWrongMethodsAndPathsAnswerJSON: with the three handlers mounted as
// the node mounts them, a wrong method gets 405 with Allow and an unknown
// path 404, both as the API's error JSON (not the mux's plain text).
func TestWrongMethodsAndPathsAnswerJSON(t *testing.T) {
	m := soloPrefetch(t)
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", admin.Handler(admin.Options{Status: func(context.Context) (admin.Status, error) { return admin.Status{}, nil }}))
	images := admin.ImagesHandler(admin.ImagesOptions{Store: blobstore.NewMemory()})
	mux.Handle(admin.ImagesPath, images)
	mux.Handle(admin.ImagesPath+"/", images)
	pf := admin.PrefetchHandler(m, nil)
	mux.Handle(admin.PrefetchPath, pf)
	mux.Handle(admin.PrefetchPath+"/", pf)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{http.MethodPost, admin.StatusPath, 405, admin.CodeUnsupported, "GET, HEAD"},
		{http.MethodDelete, admin.PeersPath, 405, admin.CodeUnsupported, "GET, HEAD"},
		{http.MethodGet, admin.PrefetchPath, 405, admin.CodeUnsupported, "POST"},
		{http.MethodDelete, admin.PrefetchPath + "/abc", 405, admin.CodeUnsupported, "GET, HEAD"},
		{http.MethodGet, admin.ImagesPath + "/rm", 405, admin.CodeUnsupported, "POST"},
		{http.MethodPost, admin.ImagesPath, 405, admin.CodeUnsupported, "GET, HEAD"},
		{http.MethodGet, "/api/v1/nosuch", 404, admin.CodeNotFound, ""},
		{http.MethodGet, admin.PrefetchPath + "/", 404, admin.CodeNotFound, ""},
		{http.MethodGet, admin.ImagesPath + "/nosuch", 404, admin.CodeNotFound, ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb admin.ErrorBody
		jerr := json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if resp.StatusCode != tc.status || jerr != nil || len(eb.Errors) != 1 || eb.Errors[0].Code != tc.code ||
			resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q %+v (%v); want %d Allow %q with code %s", tc.method, tc.path,
				resp.StatusCode, resp.Header.Get("Allow"), eb, jerr, tc.status, tc.allow, tc.code)
		}
	}
}
