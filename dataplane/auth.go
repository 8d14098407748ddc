package dataplane

// Authentication of data-plane requests with the fleet key.
//
// Threat model. The data plane carries content-addressed bytes between
// members of one fleet over plain HTTP on the LAN. With a fleet key, every
// request carries
//
//	Authorization: imgmesh-fleet <nodeID>:<unix seconds>:<base64url(mac)>
//
// where mac = HMAC-SHA256(Derive(DataPlane), "imgmesh-fleet v1\n" method "\n"
// request-URI "\n" unix "\n" nodeID). The server accepts a timestamp within
// ±maxSkew of its own clock and compares MACs in constant time.
//
//   - Strangers on the LAN (no key) get 401 for every request, before the
//     store is consulted: they learn neither content nor whether a digest is
//     held.
//   - The key never crosses the wire; a captured header authorises only that
//     method and URI for about two minutes. Replaying it re-reads the same
//     content-addressed, read-only resource, which is harmless.
//   - The node ID is claimed, not proven: any member can sign as any ID. It is
//     for logs, not for access decisions.
//   - Bytes are not encrypted. Integrity of blobs and manifests comes from
//     their digests (the fetching node verifies every byte). Tag answers are
//     the one thing a digest cannot vouch for, so with a key the server also
//     MACs the tag response, bound to the request's Authorization; the client
//     rejects an answer without a valid one. Blob headers (sizes) are not
//     MACed: a forged size can only make a verified fetch fail.
//   - Fleets that need confidentiality need encryption (TLS) on top; not
//     provided here.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Scheme is the Authorization scheme of data-plane requests.
const Scheme = "imgmesh-fleet"

// responseMACHeader carries the server's MAC of a tag answer.
const responseMACHeader = "Imgmesh-Fleet-Mac"

// maxSkew is how far a request's timestamp may be from the server's clock.
const maxSkew = 120 * time.Second

// maxNodeID bounds the claimed node ID (libp2p peer IDs are ~52 characters).
const maxNodeID = 128

var errBadAuth = errors.New("bad authorization")

// requestMAC is the MAC of one request.
func requestMAC(key []byte, method, uri, unix, nodeID string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("imgmesh-fleet v1\n" + method + "\n" + uri + "\n" + unix + "\n" + nodeID))
	return m.Sum(nil)
}

// authorization returns the Authorization header value for a request.
func authorization(key []byte, nodeID, method, uri string, now time.Time) string {
	unix := strconv.FormatInt(now.Unix(), 10)
	mac := requestMAC(key, method, uri, unix, nodeID)
	return Scheme + " " + nodeID + ":" + unix + ":" + base64.RawURLEncoding.EncodeToString(mac)
}

// checkAuthorization verifies header for method and uri at time now and
// returns the claimed node ID.
func checkAuthorization(key []byte, header, method, uri string, now time.Time) (string, error) {
	cred, ok := strings.CutPrefix(header, Scheme+" ")
	if !ok {
		return "", errBadAuth
	}
	// nodeID:unix:mac, split from the right: the MAC and the number hold no ':'.
	i := strings.LastIndexByte(cred, ':')
	if i < 0 {
		return "", errBadAuth
	}
	j := strings.LastIndexByte(cred[:i], ':')
	if j < 0 {
		return "", errBadAuth
	}
	nodeID, unix, macText := cred[:j], cred[j+1:i], cred[i+1:]
	if !validNodeID(nodeID) {
		return "", errBadAuth
	}
	ts, err := strconv.ParseInt(unix, 10, 64)
	if err != nil {
		return "", errBadAuth
	}
	if skew := now.Sub(time.Unix(ts, 0)); skew > maxSkew || skew < -maxSkew {
		return "", errBadAuth
	}
	mac, err := base64.RawURLEncoding.DecodeString(macText)
	if err != nil {
		return "", errBadAuth
	}
	if !hmac.Equal(mac, requestMAC(key, method, uri, unix, nodeID)) {
		return "", errBadAuth
	}
	return nodeID, nil
}

// responseMAC is the MAC of a response body answering the request that
// carried authorization.
func responseMAC(key []byte, authorization string, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("imgmesh-fleet v1 response\n" + authorization + "\n"))
	m.Write(body)
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// validNodeID accepts 1..maxNodeID printable ASCII characters, no spaces.
func validNodeID(id string) bool {
	if id == "" || len(id) > maxNodeID {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}
