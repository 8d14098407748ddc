// Package fleetkey reads and makes the fleet key: one 32-byte secret shared by
// every node of a fleet, in libp2p's private-network (PSK v1) file format so
// the same file turns on libp2p's pnet. Other uses derive their own keys from
// it (HKDF-SHA256), so no two protocols share key material.
package fleetkey

import (
	"bufio"
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Size is the length of a fleet key in bytes.
const Size = 32

const (
	header   = "/key/swarm/psk/1.0.0/"
	encoding = "/base16/"
)

// Purposes of derived keys.
const (
	Gossip    = "imgmesh gossip v1"    // memberlist's SecretKey
	DataPlane = "imgmesh dataplane v1" // HMAC of blob requests between peers
)

// Key is a fleet key. The zero value means "no fleet key": an open fleet.
type Key []byte

// Generate returns a new random fleet key.
func Generate() (Key, error) {
	k := make(Key, Size)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return k, nil
}

// Encode writes k in the PSK v1 file format.
func (k Key) Encode(w io.Writer) error {
	_, err := fmt.Fprintf(w, "%s\n%s\n%s\n", header, encoding, hex.EncodeToString(k))
	return err
}

// PSK returns k in the file format, for libp2p's pnet.DecodeV1PSK.
func (k Key) PSK() []byte {
	var b bytes.Buffer
	_ = k.Encode(&b)
	return b.Bytes()
}

// Derive returns a 32-byte key for purpose (Gossip, DataPlane).
func (k Key) Derive(purpose string) []byte {
	out, err := hkdf.Key(sha256.New, k, nil, purpose, 32)
	if err != nil { // only for lengths hkdf cannot produce; 32 always works
		panic(err)
	}
	return out
}

// Decode parses the PSK v1 file format (base16 only).
func Decode(r io.Reader) (Key, error) {
	sc := bufio.NewScanner(io.LimitReader(r, 4096))
	var lines []string
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(lines) != 3 || lines[0] != header || lines[1] != encoding {
		return nil, errors.New("fleet key: want 3 lines: " + header + ", " + encoding + ", 64 hex digits (make one with `imgmesh keygen`)")
	}
	k, err := hex.DecodeString(lines[2])
	if err != nil || len(k) != Size {
		return nil, fmt.Errorf("fleet key: third line must be %d hex digits", 2*Size)
	}
	return k, nil
}

// Load reads a fleet key file.
func Load(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fleet key: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return nil, fmt.Errorf("fleet key %s: a directory, not a key file (make one with imgmesh keygen > fleet.key)", path)
	}
	k, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
