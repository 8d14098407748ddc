package blobstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ErrInvalidManifest: manifest bytes that are not a JSON object, or whose
// fields are malformed.
var ErrInvalidManifest = errors.New("invalid manifest")

// ManifestFields are the parts of a manifest the index keeps.
type manifestFields struct {
	MediaType    string              `json:"mediaType"`
	ArtifactType string              `json:"artifactType"`
	Config       *ocispec.Descriptor `json:"config"`
	Subject      *ocispec.Descriptor `json:"subject"`
	Annotations  map[string]string   `json:"annotations"`
}

// ParseManifest builds the index record of manifest bytes with digest d.
// mediaType is the type to record; empty means the body's mediaType field.
// artifactType falls back to config.mediaType, as the referrers API wants.
func ParseManifest(body []byte, mediaType string, d digest.Digest) (Manifest, error) {
	if t := bytes.TrimSpace(body); len(t) == 0 || t[0] != '{' {
		return Manifest{}, fmt.Errorf("%w: not a JSON object", ErrInvalidManifest)
	}
	var doc manifestFields
	if err := json.Unmarshal(body, &doc); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if mediaType == "" {
		mediaType = doc.MediaType
	}
	rec := Manifest{
		Digest:       d,
		MediaType:    mediaType,
		Size:         int64(len(body)),
		ArtifactType: doc.ArtifactType,
		Annotations:  doc.Annotations,
	}
	if rec.ArtifactType == "" && doc.Config != nil {
		rec.ArtifactType = doc.Config.MediaType
	}
	if doc.Subject != nil {
		if err := CheckDigest(doc.Subject.Digest); err != nil {
			return Manifest{}, fmt.Errorf("%w: subject digest: %v", ErrInvalidManifest, err)
		}
		rec.Subject = doc.Subject.Digest
	}
	return rec, nil
}

// BodyMediaType returns the mediaType field of a manifest body, or "".
func BodyMediaType(body []byte) string {
	var doc struct {
		MediaType string `json:"mediaType"`
	}
	_ = json.Unmarshal(body, &doc)
	return doc.MediaType
}
