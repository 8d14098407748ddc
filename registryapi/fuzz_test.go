package registryapi

import (
	"strings"
	"testing"
)

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{
		"/v2/", "/v2/a/manifests/latest", "/v2/a/b/c/blobs/sha256:abc", "/v2/a/blobs/uploads/",
		"/v2/a/blobs/uploads/123", "/v2/a/tags/list", "/v2/a/referrers/sha256:0", "/v2/a/blobs/uploads",
		"/v2/A/manifests/x", "/v2/a/../b/tags/list", "/v2//manifests/x", "/v2/a/manifests/", "/v3/a",
		"/v2/blobs/blobs/uploads/blobs", "/v2/a__b/c-d.e/manifests/v1.0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		rt, err := parsePath(p)
		if err != nil {
			if err.Status != 400 && err.Status != 404 {
				t.Fatalf("%q: status %d", p, err.Status)
			}
			return
		}
		if rt.kind == routePing {
			if p != "/v2/" && p != "/v2" {
				t.Fatalf("%q parsed as ping", p)
			}
			return
		}
		if checkName(rt.name) != nil || len(rt.name) > maxNameLen {
			t.Fatalf("%q: accepted invalid name %q", p, rt.name)
		}
		// Round trip: the parts rebuild the path.
		var rebuilt string
		switch rt.kind {
		case routeManifest:
			rebuilt = "/v2/" + rt.name + "/manifests/" + rt.ref
		case routeBlob:
			rebuilt = "/v2/" + rt.name + "/blobs/" + rt.ref
		case routeUpload:
			rebuilt = "/v2/" + rt.name + "/blobs/uploads/" + rt.ref
		case routeUploadStart:
			rebuilt = "/v2/" + rt.name + "/blobs/uploads/"
			p = strings.TrimSuffix(p, "/") + "/"
		case routeTags:
			rebuilt = "/v2/" + rt.name + "/tags/list"
		case routeReferrers:
			rebuilt = "/v2/" + rt.name + "/referrers/" + rt.ref
		default:
			t.Fatalf("%q: kind %v", p, rt.kind)
		}
		if rebuilt != p {
			t.Fatalf("%q rebuilt as %q", p, rebuilt)
		}
		if rt.kind != routeUploadStart && rt.kind != routeTags && (rt.ref == "" || strings.Contains(rt.ref, "/")) {
			t.Fatalf("%q: bad ref %q", p, rt.ref)
		}
	})
}

func FuzzParseReference(f *testing.F) {
	for _, s := range []string{
		"latest", "v1.0.0-rc_1", "sha256:" + strings.Repeat("a", 64), "sha512:" + strings.Repeat("b", 128),
		"sha256:baddigeststring", "md5:d41d8cd98f00b204e9800998ecf8427e", "-bad", ".bad", strings.Repeat("t", 129), "",
		"SHA256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("A", 64),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ref, err := parseReference(s)
		if err != nil {
			if err.Status != 400 {
				t.Fatalf("%q: status %d", s, err.Status)
			}
			return
		}
		if ref.String() != s {
			t.Fatalf("%q round-trips as %q", s, ref.String())
		}
		switch {
		case ref.tag != "" && ref.digest != "":
			t.Fatalf("%q: both tag and digest", s)
		case ref.tag != "":
			if len(ref.tag) > 128 || strings.ContainsAny(ref.tag, ":/@") {
				t.Fatalf("%q: bad tag accepted", s)
			}
		default:
			if err := ref.digest.Validate(); err != nil {
				t.Fatalf("%q: invalid digest accepted: %v", s, err)
			}
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{
		"bytes=0-0", "bytes=500-1499", "bytes=500-", "bytes=-500", "bytes=2000-5000", "bytes=500-0",
		"bytes=5000-10000", "bytes=0-1,5-9", "bytes=-0", "bytes=a-b", "bytes=", "items=0-1", "bytes= 1-2 , 4-",
		"bytes=99999999999999999999-", "bytes=-9223372036854775807",
	} {
		f.Add(s, int64(2048))
	}
	f.Add("bytes=0-", int64(0))
	f.Fuzz(func(t *testing.T, h string, size int64) {
		rs, err := parseRange(h, size)
		if err != nil {
			if err != errRangeSyntax && err != errRangeUnsatisfiable {
				t.Fatalf("%q: unexpected error %v", h, err)
			}
			return
		}
		if len(rs) == 0 || len(rs) > maxRanges {
			t.Fatalf("%q: %d ranges", h, len(rs))
		}
		for _, r := range rs {
			if r.start < 0 || r.length < 1 || r.start+r.length > size || r.start+r.length < r.start {
				t.Fatalf("%q size %d: out of bounds %+v", h, size, r)
			}
		}
		// The canonical form parses to the same ranges.
		again, err := parseRange(formatRange(rs), size)
		if err != nil || len(again) != len(rs) {
			t.Fatalf("%q: canonical %q does not round-trip: %v", h, formatRange(rs), err)
		}
		for i := range rs {
			if again[i] != rs[i] {
				t.Fatalf("%q: %v != %v", h, again, rs)
			}
		}
	})
}
