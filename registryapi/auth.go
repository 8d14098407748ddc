package registryapi

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// ErrHtpasswd is wrapped by every error about an htpasswd file's content.
var ErrHtpasswd = errors.New("htpasswd")

// Defaults of an Authenticator.
const (
	// DefaultAuthRealm is the realm of the WWW-Authenticate challenge.
	DefaultAuthRealm = "imgmesh"
	// authCacheTTL is how long a verified user+password pair is trusted
	// without running bcrypt again (~50 ms of CPU at cost 10).
	authCacheTTL = time.Minute
	// authCacheSize bounds the remembered pairs; the cache is swept, then
	// emptied, when it is full.
	authCacheSize = 1024
	// maxPasswordLen is bcrypt's limit: longer passwords are cut to 72 bytes
	// by bcrypt, so a longer one is refused rather than matched by prefix.
	maxPasswordLen = 72
)

// AuthOptions configure an Authenticator.
type AuthOptions struct {
	// Users are the accounts (required): see LoadHtpasswd.
	Users *Htpasswd
	// Pullers are accounts that may only read: GET and HEAD, on any path.
	// A push, a delete or a change through the admin API answers 403
	// DENIED. A name may not be in both Users and Pullers.
	Pullers *Htpasswd
	// Queries are paths where a POST only reads (a question with a JSON
	// body, like the admin API's images/missing): pull-only accounts may
	// POST there too.
	Queries []string
	Realm   string       // default DefaultAuthRealm
	Logger  *slog.Logger // default: discard

	now func() time.Time // tests
}

// Authenticator checks HTTP basic auth against an htpasswd file. It is
// safe for concurrent use.
type Authenticator struct {
	users   []htUser
	queries []string // POST paths that only read
	realm   string
	log     *slog.Logger
	now     func() time.Time
	sem     chan struct{} // bounds concurrent bcrypt runs to the CPUs
	// dummy is checked for unknown users, so that they cost as much as a
	// wrong password: a random password at the first account's cost.
	dummy []byte

	cacheKey []byte // random per process: cached entries are HMACs, not passwords
	mu       sync.Mutex
	cache    map[[sha256.Size]byte]cached // HMAC(user, password) → its account

	bcrypts atomic.Int64 // bcrypt runs, for tests
}

// NewAuthenticator returns an Authenticator for opts.Users.
func NewAuthenticator(opts AuthOptions) (*Authenticator, error) {
	if opts.Users == nil || len(opts.Users.users) == 0 {
		return nil, fmt.Errorf("%w: no users", ErrHtpasswd)
	}
	users := slices.Clone(opts.Users.users)
	for i := range users {
		users[i].access = FullAccess
	}
	if opts.Pullers != nil {
		for _, p := range opts.Pullers.users {
			if slices.ContainsFunc(users, func(u htUser) bool { return u.name == p.name }) {
				return nil, fmt.Errorf("%w: user %q is both a full and a pull-only account", ErrHtpasswd, p.name)
			}
			p.access = PullOnly
			users = append(users, p)
		}
	}
	if opts.Realm == "" {
		opts.Realm = DefaultAuthRealm
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("auth cache key: %w", err)
	}
	cost, err := bcrypt.Cost(opts.Users.users[0].hash)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHtpasswd, err)
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte(rand.Text()), cost)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	return &Authenticator{
		users:    users,
		queries:  slices.Clone(opts.Queries),
		realm:    opts.Realm,
		log:      opts.Logger,
		now:      opts.now,
		sem:      make(chan struct{}, runtime.GOMAXPROCS(0)),
		dummy:    dummy,
		cacheKey: key,
		cache:    make(map[[sha256.Size]byte]cached),
	}, nil
}

// cached is a verified pair: until when it is trusted, and its account's
// access.
type cached struct {
	expiry time.Time
	access Access
}

// Access is what an account may do.
type Access int

// The outcomes of Check.
const (
	NoAccess   Access = iota // no such user, or a wrong password
	PullOnly                 // an account of AuthOptions.Pullers
	FullAccess               // an account of AuthOptions.Users
)

// Check reports what user with password may do. A match is remembered for
// a minute, so a client's next requests skip bcrypt; a mismatch always
// costs a full bcrypt run, for unknown users too.
func (a *Authenticator) Check(ctx context.Context, user, password string) (Access, error) {
	if len(password) > maxPasswordLen {
		return NoAccess, nil
	}
	mac := hmac.New(sha256.New, a.cacheKey)
	_, _ = io.WriteString(mac, user)
	_, _ = mac.Write([]byte{0})
	_, _ = io.WriteString(mac, password)
	var k [sha256.Size]byte
	mac.Sum(k[:0])
	if c, ok := a.cached(k); ok {
		return c.access, nil
	}

	// Compare against every name, so the time taken does not tell which
	// prefix of a name exists.
	hash, access := a.dummy, NoAccess
	found := 0
	for _, u := range a.users {
		eq := subtle.ConstantTimeCompare([]byte(u.name), []byte(user))
		if eq == 1 && found == 0 {
			hash, access = u.hash, u.access
		}
		found |= eq
	}
	select {
	case a.sem <- struct{}{}:
	case <-ctx.Done():
		return NoAccess, ctx.Err()
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	<-a.sem
	a.bcrypts.Add(1)
	if err != nil || found == 0 {
		return NoAccess, nil
	}
	a.remember(k, cached{access: access})
	return access, nil
}

func (a *Authenticator) cached(k [sha256.Size]byte) (cached, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c, ok := a.cache[k]
	if ok && a.now().Before(c.expiry) {
		return c, true
	}
	if ok {
		delete(a.cache, k)
	}
	return cached{}, false
}

func (a *Authenticator) remember(k [sha256.Size]byte, c cached) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	if len(a.cache) >= authCacheSize {
		for key, old := range a.cache {
			if !now.Before(old.expiry) {
				delete(a.cache, key)
			}
		}
		if len(a.cache) >= authCacheSize {
			clear(a.cache) // all live: start over rather than grow
		}
	}
	c.expiry = now.Add(authCacheTTL)
	a.cache[k] = c
}

// Wrap returns next behind basic auth. /healthz and /readyz stay open (for
// probes); every other path answers 401 UNAUTHORIZED with a Basic challenge
// unless the request carries valid credentials, and 403 DENIED to a
// pull-only account for anything but GET and HEAD.
func (a *Authenticator) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		user, pass, ok := r.BasicAuth()
		if ok {
			access, err := a.Check(r.Context(), user, pass)
			switch {
			case access == FullAccess || (access == PullOnly && a.reads(r)):
				next.ServeHTTP(w, r)
				return
			case access == PullOnly:
				a.log.LogAttrs(r.Context(), slog.LevelWarn, "denied: a pull-only account",
					slog.String("user", user), slog.String("remote", r.RemoteAddr),
					slog.String("method", r.Method), slog.String("path", r.URL.Path))
				writeError(w, r, apiError(CodeDenied, fmt.Sprintf(
					"account %q may only pull (GET and HEAD); %s %s needs an account of --htpasswd", user, r.Method, r.URL.Path)))
				return
			case err == nil:
				a.log.LogAttrs(r.Context(), slog.LevelWarn, "authentication failed",
					slog.String("user", user), slog.String("remote", r.RemoteAddr), slog.String("path", r.URL.Path))
			}
		}
		if r.URL.Path == "/v2" || strings.HasPrefix(r.URL.Path, "/v2/") {
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf("Basic realm=%q", a.realm))
		writeError(w, r, apiError(CodeUnauthorized, nil))
	})
}

// reads reports whether r only reads: a GET, a HEAD, or a POST to one of
// the query paths.
func (a *Authenticator) reads(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return true
	case http.MethodPost:
		return slices.Contains(a.queries, r.URL.Path)
	}
	return false
}

// Htpasswd is the accounts of an htpasswd file, bcrypt hashes only.
type Htpasswd struct {
	users []htUser
}

type htUser struct {
	name   string
	hash   []byte
	access Access // set by NewAuthenticator
}

// Len is the number of accounts.
func (h *Htpasswd) Len() int { return len(h.users) }

// LoadHtpasswd reads an htpasswd file (as written by `htpasswd -B`): one
// USER:HASH a line, blank lines and # comments skipped. Every hash must be
// bcrypt ($2a$, $2b$ or $2y$); MD5, SHA1, crypt or plain passwords are
// refused with the line that holds them.
func LoadHtpasswd(path string) (*Htpasswd, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("htpasswd: %w", err)
	}
	defer f.Close()
	h, err := ParseHtpasswd(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// ParseHtpasswd reads htpasswd content; see LoadHtpasswd.
func ParseHtpasswd(r io.Reader) (*Htpasswd, error) {
	h := &Htpasswd{}
	seen := map[string]bool{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		name, hash, ok := strings.Cut(text, ":")
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: line %d: want USER:HASH", ErrHtpasswd, line)
		case name == "":
			return nil, fmt.Errorf("%w: line %d: empty user name", ErrHtpasswd, line)
		case seen[name]:
			return nil, fmt.Errorf("%w: line %d: user %q listed twice", ErrHtpasswd, line, name)
		case !isBcrypt(hash):
			return nil, fmt.Errorf("%w: line %d: user %q: not a bcrypt hash (create it with `htpasswd -B`)", ErrHtpasswd, line, name)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return nil, fmt.Errorf("%w: line %d: user %q: bad bcrypt hash: %v", ErrHtpasswd, line, name, err)
		}
		seen[name] = true
		h.users = append(h.users, htUser{name: name, hash: []byte(hash)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrHtpasswd, err)
	}
	if len(h.users) == 0 {
		return nil, fmt.Errorf("%w: no users", ErrHtpasswd)
	}
	return h, nil
}

func isBcrypt(hash string) bool {
	for _, p := range []string{"$2a$", "$2b$", "$2y$"} {
		if strings.HasPrefix(hash, p) {
			return true
		}
	}
	return false
}
