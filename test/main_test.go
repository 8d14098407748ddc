// Package e2e runs the real imgmesh binary against real clients (containerd,
// skopeo, the OCI conformance program) and a real upstream registry (Debian's
// docker-registry behind a counting, fault-injecting reverse proxy).
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/internal/testlog"
	"go.uber.org/goleak"
)

// imgmeshBin is the binary built once by TestMain from ./cmd/imgmesh.
var imgmeshBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "imgmesh-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	imgmeshBin = filepath.Join(dir, "imgmesh")
	args := []string{"build", "-o", imgmeshBin}
	// Under -race the node is built with the race detector too, so the real
	// clients' traffic exercises it (IMGMESH_E2E_RACE=0/1 overrides).
	if race := os.Getenv("IMGMESH_E2E_RACE"); race == "1" || (race == "" && raceEnabled) {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "./cmd/imgmesh")...)
	build.Dir = ".." // the repository root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build ./cmd/imgmesh: %v\n%s", err, out)
		return 1
	}

	code := m.Run()
	// Backstop: every test stops its processes in t.Cleanup; whatever is
	// left (a panic mid-test) is killed here, by process group id.
	procs.killAll()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: leaked goroutines:", err)
			return 1
		}
	}
	return code
}

// procs tracks every process the tests start.
var procs = &procTable{m: map[int]*proc{}}

type procTable struct {
	mu sync.Mutex
	m  map[int]*proc
}

func (pt *procTable) add(p *proc) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.m[p.pid] = p
}

func (pt *procTable) remove(p *proc) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	delete(pt.m, p.pid)
}

func (pt *procTable) killAll() {
	pt.mu.Lock()
	left := make([]*proc, 0, len(pt.m))
	for _, p := range pt.m {
		left = append(left, p)
	}
	pt.mu.Unlock()
	for _, p := range left {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
}

// proc is a child process in its own process group, its output in a file.
type proc struct {
	name    string
	pid     int
	logPath string
	tailN   int           // lines of output shown when the test failed
	done    chan struct{} // closed when the process exited
	err     error         // Wait's result, valid after done
	// termSent: SIGTERM went to the process (a node stops on the first
	// and dies on the second).
	termSent atomic.Bool
}

// terminate sends SIGTERM once.
func (p *proc) terminate() {
	if !p.termSent.Swap(true) {
		_ = syscall.Kill(-p.pid, syscall.SIGTERM)
	}
}

// startProc starts argv with its output in a log file, and stops it (and
// shows its log if the test failed) when the test ends.
func startProc(t *testing.T, name string, env []string, argv ...string) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, pid: cmd.Process.Pid, logPath: logf.Name(), tailN: 40, done: make(chan struct{})}
	procs.add(p)
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("--- last lines of %s (pid %d) ---\n%s", name, p.pid, p.tail(p.tailN))
			p.keepLog(t)
		}
	})
	return p
}

// keepLog leaves the whole output of a failed test's process in
// IMGMESH_TEST_LOGS, if set.
func (p *proc) keepLog(t *testing.T) {
	if testlog.KeepDir() == "" {
		return
	}
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Logf("keep the log of %s: %v", p.name, err)
		return
	}
	testlog.Keep(t, p.name, b)
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s, and
// waits for the exit. It returns Wait's error; stopping twice is harmless.
func (p *proc) stop(t *testing.T) error {
	t.Helper()
	if !p.exited() {
		p.terminate() // once: a second SIGTERM would end it before it says where it hangs
		start := time.Now()
		select {
		case <-p.done:
			if took := time.Since(start); took > 3*time.Second {
				t.Logf("%s (pid %d) took %s to stop on SIGTERM", p.name, p.pid, took.Round(time.Millisecond))
			}
		case <-time.After(10 * time.Second):
			// SIGQUIT makes a Go process print every goroutine's stack
			// before it exits: the log then says where it was stuck.
			_ = syscall.Kill(p.pid, syscall.SIGQUIT)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-p.pid, syscall.SIGKILL)
				<-p.done
			}
			t.Errorf("%s (pid %d) ignored SIGTERM for 10s; stopped it with SIGQUIT. Where it was:\n%s", p.name, p.pid, p.stuckAt())
		}
	}
	// The group may hold children (containerd shims); make sure none stay.
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	procs.remove(p)
	return p.err
}

// tail returns the last n lines of the process's output.
func (p *proc) tail(n int) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"component":"badger"`) {
			continue // the store's internals drown what matters
		}
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// stuckAt returns the goroutine stacks a Go process printed on SIGQUIT,
// only those running our own code, at most 16 KiB of them.
func (p *proc) stuckAt() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	_, dump, ok := strings.Cut(string(b), "SIGQUIT: quit")
	if !ok {
		return "(no goroutine dump in its log)"
	}
	var out strings.Builder
	for _, g := range strings.Split(dump, "\n\n") {
		if !strings.Contains(g, "github.com/imgmesh/imgmesh/") {
			continue
		}
		if out.Len()+len(g) > 16<<10 {
			out.WriteString("[more goroutines left out]\n")
			break
		}
		out.WriteString(g + "\n\n")
	}
	return out.String()
}

// log returns the whole output so far.
func (p *proc) log(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// poll calls check until it returns nil, the process p (if any) exits, or
// the deadline passes; it fails the test with the last error then.
func poll(t *testing.T, what string, timeout time.Duration, p *proc, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if p != nil && p.exited() {
			t.Fatalf("%s: %s exited (%v) before it was ready; last error: %v\n%s", what, p.name, p.err, err, p.tail(40))
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not ready after %s: %v", what, timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// requireTool finds an external program. Missing: skip, but under CI=true
// fail, since .ci/run installs it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("%s not installed (apt-get install containerd skopeo docker-registry, as .ci/run does): %v", name, err)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// requireRoot skips (or under CI=true fails) when not running as root.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test runs containerd and needs root; CI runs as root")
	}
	t.Skip("this test runs containerd and needs root")
}

// run executes a short-lived command and returns its combined output.
func run(ctx context.Context, t *testing.T, argv ...string) (string, error) {
	t.Helper()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out), nil
}

// mustRun is run that fails the test on error.
func mustRun(ctx context.Context, t *testing.T, argv ...string) string {
	t.Helper()
	out, err := run(ctx, t, argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// testContext is a context cancelled when the test ends or after d.
func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// httpClient returns a client whose idle connections close with the test.
func httpClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}
