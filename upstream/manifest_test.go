package upstream_test

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/upstream"
)

type pushed struct {
	raw       []byte
	digest    digest.Digest
	mediaType string
}

func describe(t *testing.T, m interface {
	RawManifest() ([]byte, error)
	Digest() (v1.Hash, error)
	MediaType() (types.MediaType, error)
}) pushed {
	t.Helper()
	return pushed{
		raw:       must[[]byte](t)(m.RawManifest()),
		digest:    digest.Digest(must[v1.Hash](t)(m.Digest()).String()),
		mediaType: string(must[types.MediaType](t)(m.MediaType())),
	}
}

func TestManifest(t *testing.T) {
	o := newOrigin(t)
	docker := randomImage(t, 512, 1)
	oci := mutate.MediaType(randomImage(t, 512, 1), types.OCIManifestSchema1)
	idx := must[v1.ImageIndex](t)(random.Index(256, 1, 2))
	o.pushImage(t, "library/app", "docker", docker)
	o.pushImage(t, "library/app", "oci", oci)
	o.pushIndex(t, "library/app", "index", idx)
	want := map[string]pushed{"docker": describe(t, docker), "oci": describe(t, oci), "index": describe(t, idx)}
	if want["docker"].mediaType != string(types.DockerManifestSchema2) || want["index"].mediaType != string(types.OCIImageIndex) {
		t.Fatalf("test images have unexpected media types: %v", want)
	}
	c := originClient(t, o, "docker.io")

	for _, tc := range []struct {
		name  string
		tag   string
		byDig bool
		head  bool
	}{
		{name: "docker by tag GET", tag: "docker"},
		{name: "docker by tag HEAD", tag: "docker", head: true},
		{name: "docker by digest GET", tag: "docker", byDig: true},
		{name: "oci by digest HEAD", tag: "oci", byDig: true, head: true},
		{name: "oci by tag GET", tag: "oci"},
		{name: "index by tag GET", tag: "index"},
		{name: "index by digest HEAD", tag: "index", byDig: true, head: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o.reset()
			w := want[tc.tag]
			ref := tc.tag
			if tc.byDig {
				ref = w.digest.String()
			}
			m, err := c.Manifest(bg, "docker.io", "library/app", ref, tc.head)
			if err != nil {
				t.Fatal(err)
			}
			if m.Digest != w.digest || m.MediaType != w.mediaType || m.Size != int64(len(w.raw)) {
				t.Errorf("got %s %s %d, want %s %s %d", m.Digest, m.MediaType, m.Size, w.digest, w.mediaType, len(w.raw))
			}
			method := http.MethodGet
			if tc.head {
				method = http.MethodHead
				if m.Body != nil {
					t.Errorf("HEAD returned a body")
				}
			} else if !bytes.Equal(m.Body, w.raw) {
				t.Errorf("body differs from the pushed manifest")
			}
			reqs := o.requests()
			last := reqs[len(reqs)-1]
			if last.method != method || last.path != "/v2/library/app/manifests/"+ref {
				t.Errorf("upstream saw %s %s, want %s of the manifest", last.method, last.path, method)
			}
			accept := last.header.Get("Accept")
			for _, mt := range []types.MediaType{types.OCIImageIndex, types.OCIManifestSchema1, types.DockerManifestList, types.DockerManifestSchema2} {
				if !strings.Contains(accept, string(mt)) {
					t.Errorf("Accept %q lacks %s", accept, mt)
				}
			}
			if ua := last.header.Get("User-Agent"); !strings.HasPrefix(ua, "imgmesh") {
				t.Errorf("User-Agent %q", ua)
			}
		})
	}
}

func TestManifestHeadWithoutDigestFallsBackToGet(t *testing.T) {
	o := newOrigin(t)
	img := randomImage(t, 256, 1)
	o.pushImage(t, "app", "v1", img)
	w := describe(t, img)
	o.setIntercept(func(rw http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if r.Method != http.MethodHead {
			return false
		}
		rw.Header().Set("Content-Length", strconv.Itoa(len(w.raw)))
		rw.WriteHeader(http.StatusOK) // no Docker-Content-Digest
		return true
	})
	c := originClient(t, o, "reg.test")
	m, err := c.Manifest(bg, "reg.test", "app", "v1", true)
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != w.digest || m.Size != int64(len(w.raw)) || m.Body != nil {
		t.Errorf("got %s %d body=%v, want %s %d no body", m.Digest, m.Size, m.Body != nil, w.digest, len(w.raw))
	}
	if h, g := o.count(http.MethodHead, "/manifests/"), o.count(http.MethodGet, "/manifests/"); h != 1 || g != 1 {
		t.Errorf("HEAD %d GET %d, want one of each", h, g)
	}
}

func TestManifestErrors(t *testing.T) {
	o := newOrigin(t)
	a, b := randomImage(t, 256, 1), randomImage(t, 256, 1)
	o.pushImage(t, "app", "a", a)
	o.pushImage(t, "app", "b", b)
	wa, wb := describe(t, a), describe(t, b)
	serve := func(status int, body []byte, hdr map[string]string) func(http.ResponseWriter, *http.Request, http.Handler) bool {
		return func(w http.ResponseWriter, r *http.Request, _ http.Handler) bool {
			if !strings.Contains(r.URL.Path, "/manifests/") {
				return false
			}
			for k, v := range hdr {
				w.Header().Set(k, v)
			}
			w.WriteHeader(status)
			_, _ = w.Write(body)
			return true
		}
	}
	ctype := map[string]string{"Content-Type": wa.mediaType}
	for _, tc := range []struct {
		name      string
		ref       string
		head      bool
		intercept func(http.ResponseWriter, *http.Request, http.Handler) bool
		want      error
		msg       string
	}{
		{name: "unknown tag", ref: "nope", want: upstream.ErrNotFound, msg: "reg.test/app:nope"},
		{name: "unknown tag HEAD", ref: "nope", head: true, want: upstream.ErrNotFound},
		{name: "unknown digest", ref: digest.FromString("x").String(), want: upstream.ErrNotFound},
		{name: "bytes of another manifest for a digest", ref: wa.digest.String(), want: upstream.ErrUnavailable, msg: "lied",
			intercept: serve(200, wb.raw, map[string]string{"Docker-Content-Digest": wa.digest.String(), "Content-Type": wb.mediaType})},
		{name: "HEAD names another digest", ref: wa.digest.String(), head: true, want: upstream.ErrUnavailable, msg: "lied",
			intercept: serve(200, nil, map[string]string{"Docker-Content-Digest": wb.digest.String(), "Content-Length": "10"})},
		{name: "tag body not matching Docker-Content-Digest", ref: "a", want: upstream.ErrUnavailable, msg: "lied",
			intercept: serve(200, wb.raw, map[string]string{"Docker-Content-Digest": wa.digest.String()})},
		{name: "over 4 MiB", ref: "a", want: upstream.ErrUnavailable, msg: "limit",
			intercept: serve(200, bytes.Repeat([]byte(" "), upstream.MaxManifestSize+1), ctype)},
		{name: "500", ref: "a", want: upstream.ErrUnavailable, msg: "500", intercept: serve(500, nil, nil)},
		{name: "429", ref: "a", want: upstream.ErrUnavailable, msg: "429", intercept: serve(429, nil, nil)},
		{name: "404 OCI body", ref: "a", want: upstream.ErrNotFound,
			intercept: serve(404, []byte(`{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone"}]}`), nil)},
		{name: "sha512 digest that does not exist", ref: digest.SHA512.FromString("x").String(), want: upstream.ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o.setIntercept(tc.intercept)
			defer o.setIntercept(nil)
			c := originClient(t, o, "reg.test")
			m, err := c.Manifest(bg, "reg.test", "app", tc.ref, tc.head)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %+v, %v; want %v", m, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not mention %q", err, tc.msg)
			}
		})
	}
}

func TestManifestBadInput(t *testing.T) {
	c := newClient(t, upstream.Options{Registries: []upstream.Registry{{Name: "reg.test", URL: "http://127.0.0.1:1"}}})
	for _, tc := range []struct{ name, repo, ref string }{
		{name: "uppercase repo", repo: "App", ref: "v1"},
		{name: "dot-dot repo", repo: "a/../b", ref: "v1"},
		{name: "bad tag", repo: "app", ref: "-x"},
		{name: "md5 digest", repo: "app", ref: "md5:d41d8cd98f00b204e9800998ecf8427e"},
		{name: "short sha256", repo: "app", ref: "sha256:abc"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Manifest(bg, "reg.test", tc.repo, tc.ref, false)
			if err == nil || errors.Is(err, upstream.ErrUnavailable) {
				t.Fatalf("got %v, want an input error before any request", err)
			}
		})
	}
}
