package discovery

import (
	"context"
	"math/rand/v2"
	"net"
	"strings"
	"time"
)

// joinLoop contacts the --join addresses until one answers, with a backoff
// from JoinBackoffMin doubling to JoinBackoffMax. After that it keeps
// checking, every JoinBackoffMax, that each address is a live member, and
// re-joins those that are not: a seed that restarted under a new name would
// otherwise stay a fleet of its own.
func (f *Fleet) joinLoop(ctx context.Context, addrs []string) {
	defer f.wg.Done()
	delay := f.t.JoinBackoffMin
	joined, warned, keyWarned := false, false, false
	for {
		wait := f.t.JoinBackoffMax
		if targets := f.missing(ctx, addrs); len(targets) > 0 {
			ok := false
			for _, a := range targets { // one at a time: Close waits for one dial at most
				if ctx.Err() != nil {
					return
				}
				n, err := f.Join([]string{a})
				switch {
				case err == nil && n > 0:
					ok = true
					f.log.Info("joined fleet", "via", a)
				case keyMismatch(err) && !keyWarned:
					keyWarned = true
					f.log.Error("gossip join refused: the member there has another fleet key, or one side has none; give every node the same --fleet-key", "addr", a, "err", err)
				case !joined && !warned:
					f.log.Warn("gossip join failed; retrying in background", "addr", a, "err", err)
				default:
					f.log.Debug("gossip join failed", "addr", a, "err", err)
				}
			}
			warned = warned || !ok
			if ok {
				joined, delay = true, f.t.JoinBackoffMin
			} else {
				wait, delay = delay, min(2*delay, f.t.JoinBackoffMax)
			}
		}
		// ±20% jitter, so a fleet restarted at once does not retry in step.
		wait = time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
	}
}

// missing returns the addresses in addrs that are not the gossip address of
// a live member (this node included, so a node never joins itself).
func (f *Fleet) missing(ctx context.Context, addrs []string) []string {
	live := make(map[string]bool)
	for _, m := range f.Members() {
		if m.State == StateAlive || m.State == StateSuspect {
			live[m.Addr] = true
		}
	}
	var out []string
	for _, a := range addrs {
		if !f.isLive(ctx, a, live) {
			out = append(out, a)
		}
	}
	return out
}

func (f *Fleet) isLive(ctx context.Context, addr string, live map[string]bool) bool {
	if live[addr] {
		return true
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false // memberlist reports the bad address when joining
	}
	if net.ParseIP(host) != nil {
		return live[net.JoinHostPort(host, port)]
	}
	ctx, cancel := context.WithTimeout(ctx, f.t.TCPTimeout)
	defer cancel()
	ips, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return false
	}
	for _, ip := range ips {
		if live[net.JoinHostPort(ip, port)] {
			return true
		}
	}
	return false
}

// keyMismatch reports whether a join failed because the member's gossip is
// encrypted with another key, or only one side encrypts (memberlist's own
// errors; it has no typed ones).
func keyMismatch(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "no installed keys could decrypt") ||
		strings.Contains(msg, "remote state is encrypted and encryption is not configured") ||
		strings.Contains(msg, "encryption is configured but remote state is not encrypted")
}
