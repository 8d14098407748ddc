package registryapi

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"
)

// maxTagsPage bounds one page of the tag list.
const maxTagsPage = 10000

// tags serves GET /v2/<name>/tags/list[?n=&last=], paginated in lexical
// order with a Link header to the next page.
func (s *Server) tags(w http.ResponseWriter, r *http.Request, rt route) {
	q := r.URL.Query()
	limit := -1
	if ns := q.Get("n"); ns != "" {
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			s.fail(w, r, apiError(CodePaginationInvalid, map[string]string{"n": ns}))
			return
		}
		limit = min(n, maxTagsPage)
	}
	all, err := s.src.Tags(r.Context(), nodeName(r, rt))
	if err != nil {
		s.fail(w, r, classify(err, CodeNameUnknown))
		return
	}
	all = slices.Clone(all)
	slices.Sort(all)
	all = slices.Compact(all)
	if last := q.Get("last"); last != "" {
		i, _ := slices.BinarySearch(all, last)
		for i < len(all) && all[i] <= last {
			i++
		}
		all = all[i:]
	}
	page := all
	if limit >= 0 && len(page) > limit {
		page = page[:limit]
		if limit > 0 {
			next := url.Values{}
			if ns := q.Get("ns"); ns != "" {
				next.Set("ns", ns)
			}
			next.Set("n", strconv.Itoa(limit))
			next.Set("last", page[len(page)-1])
			w.Header().Set("Link", `</v2/`+rt.name+`/tags/list?`+next.Encode()+`>; rel="next"`)
		}
	}
	if page == nil {
		page = []string{}
	}
	writeJSON(w, r, "application/json", struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.name, page})
}

// writeJSON answers 200 with v as JSON.
func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeError(w, r, apiError(CodeUnknown, nil).wrap(err))
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", itoa(int64(len(body))))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
}
