package benchkit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one process a benchmark started, tracked by PID.
type Proc struct {
	Name string // in logs and errors
	cmd  *exec.Cmd
	log  string        // file holding its stdout and stderr
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done
}

// Procs starts processes and ends exactly those, by PID. The zero value is
// ready to use.
type Procs struct {
	mu   sync.Mutex
	list []*Proc
}

// Start runs argv with its output in logFile. The child gets its own
// process group (a terminal's Ctrl-C reaches only the benchmark, which then
// kills it by PID) and SIGKILL if the benchmark itself dies.
func (ps *Procs) Start(name, logFile string, argv ...string) (*Proc, error) {
	f, err := os.Create(logFile)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	defer f.Close() // the child holds its own descriptor
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, log: logFile, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	return p, nil
}

// PID is the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

func (p *Proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process unless it has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s (pid %d): %s: %w", p.Name, p.PID(), sig, err)
	}
	return nil
}

// Kill sends SIGKILL (which also ends a stopped process) and waits for the
// exit, bounded.
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// Stop ends the process: SIGTERM, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.Signal(syscall.SIGCONT) // a stopped process must run to see SIGTERM
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// StopAll stops every process still running, all at once: SIGTERM to each,
// then SIGKILL to those still there after 3 s.
func (ps *Procs) StopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Go(func() { p.Stop(3 * time.Second) })
	}
	wg.Wait()
}

// Tail is the end of the process's log on one line, to explain a failure.
func (p *Proc) Tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	const max = 800
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", " | ")), " ")
}

// WaitReady polls url until it answers with a status below 500 or the
// deadline passes; a process that exits meanwhile fails at once.
func WaitReady(ctx context.Context, p *Proc, url string, timeout time.Duration) error {
	return Poll(ctx, p, timeout, "ready at "+url, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode < 500, nil
	})
}

// Poll calls cond every 50 ms (each call bounded by 2 s) until it holds,
// fails, p exits (p may be nil) or timeout passes.
func Poll(ctx context.Context, p *Proc, timeout time.Duration, what string, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var done <-chan struct{}
	if p != nil {
		done = p.done
	}
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		ok, err := cond(cctx)
		ccancel()
		if err != nil || ok {
			return err
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited before %s (%v): %s", p.Name, what, p.err, p.Tail())
		case <-ctx.Done():
			if p != nil {
				return fmt.Errorf("%s not %s: %w: %s", p.Name, what, ctx.Err(), p.Tail())
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// FreePort asks the kernel for a free TCP port on loopback.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Memory is a process's resident set from /proc/PID/status, in bytes.
type Memory struct {
	RSS  int64 // VmRSS: resident now
	Peak int64 // VmHWM: highest resident since start
}

// ReadMemory reads VmRSS and VmHWM of pid.
func ReadMemory(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	var m Memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("pid %d %s %q: %w", pid, key, val, err)
		}
		if key == "VmRSS" {
			m.RSS = kb << 10
		} else {
			m.Peak = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return Memory{}, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	if m.RSS == 0 || m.Peak == 0 {
		return Memory{}, errors.New("no VmRSS/VmHWM in /proc status")
	}
	return m, nil
}
