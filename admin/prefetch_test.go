package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/admin"
	"github.com/imgmesh/imgmesh/node"
	"github.com/imgmesh/imgmesh/prefetch"
)

// instantPuller "pulls" any image at once.
type instantPuller struct{}

func (instantPuller) PullImage(_ context.Context, name node.Name, ref string, _ node.PullOptions) (digest.Digest, error) {
	return digest.FromString(name.Repo + ref), nil
}

// soloPrefetch is a started prefetch manager of a lone node, closed at the
// test's end.
func soloPrefetch(t *testing.T) *prefetch.Manager {
	t.Helper()
	m, err := prefetch.New(prefetch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(prefetch.Runtime{Self: "solo", Puller: instantPuller{}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestPrefetchAPI(t *testing.T) {
	m := soloPrefetch(t)
	srv := httptest.NewServer(admin.PrefetchHandler(m, nil))
	t.Cleanup(srv.Close)

	post := func(body string) (int, []byte) {
		resp, err := http.Post(srv.URL+admin.PrefetchPath, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	get := func(id string) (int, []byte) {
		resp, err := http.Get(srv.URL + admin.PrefetchPath + "/" + id)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	// A form or text/plain POST (all a web page may send cross-site without
	// asking) makes no order.
	resp, err := http.Post(srv.URL+admin.PrefetchPath, "text/plain", strings.NewReader(`{"refs":["plant.local/app:v1"],"timeout":"1m"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var eb admin.ErrorBody
	if resp.StatusCode != http.StatusUnsupportedMediaType || json.Unmarshal(b, &eb) != nil || len(eb.Errors) != 1 {
		t.Fatalf("text/plain POST: %d %s; want 415 with a JSON error", resp.StatusCode, b)
	}

	code, body := post(`{"refs":["plant.local/app:v1"],"timeout":"1m"}`)
	if code != http.StatusCreated {
		t.Fatalf("POST: %d %s", code, body)
	}
	var created admin.PrefetchCreated
	if err := json.Unmarshal(body, &created); err != nil || created.ID == "" || created.Order.Refs[0] != "plant.local/app:v1" {
		t.Fatalf("POST answer %s: %v", body, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := get(created.ID)
		var st prefetch.Status
		if code != http.StatusOK || json.Unmarshal(body, &st) != nil {
			t.Fatalf("GET: %d %s", code, body)
		}
		if len(st.Members) == 1 && st.Members[0].Name == "solo" && st.Members[0].Report != nil && st.Members[0].Report.State == prefetch.Complete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lone node never completed its own order: %s", body)
		}
		time.Sleep(10 * time.Millisecond)
	}

	bad := []struct {
		name, body, code string
	}{
		{name: "not JSON", body: `refs=app`, code: admin.CodeOrderInvalid},
		{name: "unknown field", body: `{"refs":["app"],"force":true}`, code: admin.CodeOrderInvalid},
		{name: "no refs", body: `{"refs":[]}`, code: admin.CodeOrderInvalid},
		{name: "bad ref", body: `{"refs":["Not/Valid"]}`, code: admin.CodeOrderInvalid},
		{name: "bad platform", body: `{"refs":["app"],"platforms":["amd64"]}`, code: admin.CodeOrderInvalid},
		{name: "bad timeout", body: `{"refs":["app"],"timeout":"-5m"}`, code: admin.CodeOrderInvalid},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(tt.body)
			var eb admin.ErrorBody
			if code != http.StatusBadRequest || json.Unmarshal(body, &eb) != nil || len(eb.Errors) != 1 || eb.Errors[0].Code != tt.code {
				t.Fatalf("got %d %s, want 400 with code %s", code, body, tt.code)
			}
		})
	}
	if code, body := get("0123456789abcdef"); code != http.StatusNotFound || !strings.Contains(string(body), admin.CodeOrderUnknown) {
		t.Fatalf("GET unknown order: %d %s", code, body)
	}
}
