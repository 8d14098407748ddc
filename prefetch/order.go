// Package prefetch rolls images out to a fleet with no central server: any
// node accepts an order (references, a label selector, platforms, a
// deadline), gossips it, and every member whose labels match pulls the
// whole image through its own fetch policy, pins it, and gossips its
// progress. Every node keeps every order and the latest report of each
// member, persists them, and merges them on gossip push/pull, so a member
// that was away or joins later still gets the order, and one restarted
// mid-order resumes.
package prefetch

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/imgmesh/imgmesh/node"
)

// ErrBadOrder: a request or an order that cannot be carried out as given.
var ErrBadOrder = errors.New("bad prefetch order")

// ErrUnknownOrder: no order with that ID (never made, or expired).
var ErrUnknownOrder = errors.New("unknown prefetch order")

// Limits of an order.
const (
	DefaultTimeout = 30 * time.Minute
	MaxTimeout     = 7 * 24 * time.Hour
	MinTimeout     = time.Second
	MaxRefs        = 32
	MaxPlatforms   = 16
	MaxSelector    = 16
	maxLabelLen    = 128
	// MaxExpected bounds the members an order names as expected.
	MaxExpected   = 10000
	maxMemberName = 256
)

// State is where a member is with an order.
type State string

// Report states.
const (
	Pending  State = "pending"  // known, waiting for its turn (or a retry)
	Pulling  State = "pulling"  // pulling now
	Complete State = "complete" // every image is in the member's store (and pinned)
	Failed   State = "failed"   // the last attempt failed; retried until the deadline
)

// Order is one rollout. It never changes once made.
type Order struct {
	ID        string            `json:"id"`
	Refs      []string          `json:"refs"`
	Selector  map[string]string `json:"selector,omitempty"`
	Platforms []string          `json:"platforms,omitempty"`
	NoPin     bool              `json:"no_pin,omitempty"`
	Origin    string            `json:"origin,omitempty"` // member that accepted it
	// Expected: the members it selected that were alive when it was
	// accepted. Each stays in the status until it reports, even if it
	// drops out first: a device that never pulled is not done. Only the
	// origin keeps it (in its file; `imgmesh prefetch` asks the origin): it
	// grows with the fleet, and an order must stay small enough to gossip.
	Expected []string  `json:"expected,omitempty"`
	Created  time.Time `json:"created"`
	Deadline time.Time `json:"deadline"`
}

// gossiped is o as it goes to the fleet: without Expected.
func (o Order) gossiped() *Order {
	o.Expected = nil
	return &o
}

// Report is one member's progress with one order; the member alone writes
// it, each new report with a larger Version.
type Report struct {
	Order    string    `json:"order"`
	Member   string    `json:"member"`
	State    State     `json:"state"`
	Done     int64     `json:"done"`  // config and layer bytes in the store
	Total    int64     `json:"total"` // known so far (grows as references resolve)
	Error    string    `json:"error,omitempty"`
	Attempts int       `json:"attempts,omitempty"`
	RetryAt  time.Time `json:"retry_at,omitzero"` // failed: when the next attempt starts
	// Lasting: failed for a reason a retry soon is unlikely to mend (the
	// image is unknown or unusable). It is still retried (it may be pushed
	// later), but nobody need wait for that, as they would for a retry
	// after an upstream or a peer that did not answer.
	Lasting bool      `json:"lasting,omitempty"`
	Digests []string  `json:"digests,omitempty"` // complete: what each reference resolved to
	Updated time.Time `json:"updated"`
	Version int64     `json:"version"`
}

// Request asks for a new order.
type Request struct {
	Refs      []string          `json:"refs"`
	Selector  map[string]string `json:"selector,omitempty"`
	Platforms []string          `json:"platforms,omitempty"`
	Timeout   string            `json:"timeout,omitempty"` // Go duration, e.g. "30m"; default DefaultTimeout
	NoPin     bool              `json:"no_pin,omitempty"`
}

// newOrder validates r and makes the order, created now, expecting the
// members (alive and selected) of the fleet.
func newOrder(r Request, origin string, fleet []Member, now time.Time) (Order, error) {
	timeout := DefaultTimeout
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		if err != nil {
			return Order{}, fmt.Errorf("%w: timeout %q: %v", ErrBadOrder, r.Timeout, err)
		}
		timeout = d
	}
	if timeout < MinTimeout || timeout > MaxTimeout {
		return Order{}, fmt.Errorf("%w: timeout %s: want %s to %s", ErrBadOrder, timeout, MinTimeout, MaxTimeout)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	o := Order{
		ID: hex.EncodeToString(id[:]), Refs: slices.Clone(r.Refs), Selector: maps.Clone(r.Selector),
		Platforms: slices.Clone(r.Platforms), NoPin: r.NoPin, Origin: origin,
		Created: now.UTC(), Deadline: now.Add(timeout).UTC(),
	}
	o.Expected = expected(o, fleet)
	return o, o.validate()
}

// validate checks an order made here or received from the fleet.
func (o Order) validate() error {
	if len(o.ID) == 0 || len(o.ID) > 64 {
		return fmt.Errorf("%w: id %q", ErrBadOrder, o.ID)
	}
	if len(o.Refs) == 0 || len(o.Refs) > MaxRefs {
		return fmt.Errorf("%w: %d references, want 1 to %d", ErrBadOrder, len(o.Refs), MaxRefs)
	}
	for _, s := range o.Refs {
		if _, err := ParseRef(s); err != nil {
			return fmt.Errorf("%w: %v", ErrBadOrder, err)
		}
	}
	if len(o.Platforms) > MaxPlatforms {
		return fmt.Errorf("%w: %d platforms, at most %d", ErrBadOrder, len(o.Platforms), MaxPlatforms)
	}
	if _, err := o.platforms(); err != nil {
		return err
	}
	if len(o.Selector) > MaxSelector {
		return fmt.Errorf("%w: %d selector labels, at most %d", ErrBadOrder, len(o.Selector), MaxSelector)
	}
	for k, v := range o.Selector {
		if k == "" || len(k) > maxLabelLen || len(v) > maxLabelLen {
			return fmt.Errorf("%w: selector label %q=%q", ErrBadOrder, k, v)
		}
	}
	if len(o.Expected) > MaxExpected {
		return fmt.Errorf("%w: %d expected members, at most %d", ErrBadOrder, len(o.Expected), MaxExpected)
	}
	for _, name := range o.Expected {
		if name == "" || len(name) > maxMemberName {
			return fmt.Errorf("%w: expected member %q", ErrBadOrder, name)
		}
	}
	if o.Created.IsZero() || !o.Deadline.After(o.Created) {
		return fmt.Errorf("%w: deadline %s not after creation %s", ErrBadOrder, o.Deadline, o.Created)
	}
	return nil
}

func (o Order) platforms() ([]node.Platform, error) {
	var out []node.Platform
	for _, s := range o.Platforms {
		p, err := node.ParsePlatform(s)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadOrder, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// Selects reports whether a member with labels is part of the order: it
// carries every label of the selector (an empty selector selects all).
func (o Order) Selects(labels map[string]string) bool {
	for k, v := range o.Selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Final reports whether a member is done with the order for now: complete,
// failed with no retry left, or failed for a lasting reason. A member that
// failed on something passing and retries before the deadline is not.
func (r Report) Final() bool {
	return r.State == Complete || r.State == Failed && (r.RetryAt.IsZero() || r.Lasting)
}

// versionAfter is a version larger than last and, when the clock allows,
// the current time: versions keep growing across restarts that lost state.
func versionAfter(last int64, now time.Time) int64 {
	return max(last+1, now.UnixNano())
}

// validate checks a report received from the fleet.
func (r Report) validate() error {
	if r.Order == "" || r.Member == "" || len(r.Member) > 256 {
		return fmt.Errorf("report: order %q member %q", r.Order, r.Member)
	}
	switch r.State {
	case Pending, Pulling, Complete, Failed:
	default:
		return fmt.Errorf("report: state %q", r.State)
	}
	for _, d := range r.Digests {
		if err := digest.Digest(d).Validate(); err != nil {
			return fmt.Errorf("report: digest %q: %w", d, err)
		}
	}
	return nil
}
