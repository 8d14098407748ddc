package admin

import (
	"slices"
	"strings"
	"testing"
)

func TestParseImageRef(t *testing.T) {
	t.Parallel()
	const dgst = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
	for _, tc := range []struct {
		name, in string
		want     ImageRef
		keys     []string // with default registry docker.io
		wantErr  string
	}{
		{name: "full", in: "docker.io/library/nginx:1.27", want: ImageRef{Registry: "docker.io", Repo: "library/nginx", Tag: "1.27"},
			keys: []string{"docker.io/library/nginx", "library/nginx"}},
		{name: "hub short", in: "nginx:1.27", want: ImageRef{Repo: "nginx", Tag: "1.27"},
			keys: []string{"docker.io/library/nginx", "docker.io/nginx", "nginx", "library/nginx"}},
		{name: "no tag is latest", in: "team/app", want: ImageRef{Repo: "team/app", Tag: "latest"},
			keys: []string{"docker.io/team/app", "team/app"}},
		{name: "host with port and digest", in: "host:5000/app@" + dgst, want: ImageRef{Registry: "host:5000", Repo: "app", Digest: dgst},
			keys: []string{"host:5000/app", "docker.io/app", "app"}},
		{name: "localhost", in: "localhost/x/y:v1", want: ImageRef{Registry: "localhost", Repo: "x/y", Tag: "v1"},
			keys: []string{"localhost/x/y", "docker.io/x/y", "x/y"}},
		{name: "tag and digest", in: "reg.local/a:v1@" + dgst, want: ImageRef{Registry: "reg.local", Repo: "a", Tag: "v1", Digest: dgst}},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "uppercase", in: "Nginx:1", wantErr: "bad repository name"},
		{name: "bad tag", in: "nginx:-x", wantErr: "bad tag"},
		{name: "bad digest", in: "nginx@sha256:abc", wantErr: "bad digest"},
		{name: "registry only", in: "host:5000/", wantErr: "no repository"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseImageRef(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseImageRef(%q) = %+v, %v; want error with %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("ParseImageRef(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
			if tc.keys != nil {
				if keys := keys(got, "docker.io"); !slices.Equal(keys, tc.keys) {
					t.Errorf("keys = %q; want %q", keys, tc.keys)
				}
			}
		})
	}
}
