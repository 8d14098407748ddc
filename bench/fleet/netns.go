package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Ports inside a device namespace (each namespace has its own).
const (
	nsAPIPort    = 5000
	nsGossipPort = 7946
	nsP2PPort    = 4001
	nsDataPort   = 5002
	upstreamPort = 5000
)

// tbfLatency bounds the queue of each shaped device: about what a switch
// port buffers, so a saturated link adds at most this much delay to a
// lookup or a request. The queue holds at least tbfMinQueue bytes though.
const tbfLatency = 25 * time.Millisecond

// tbfMinQueue: a veth hands its qdisc 64 KiB GSO packets where a real NIC
// puts 1500-byte frames on the wire, so one drop loses 44 segments at once.
// With a 25 ms queue at 50 Mbit/s (156 KB, two such packets) the upstream's
// TCP flows starved each other: in a cold run one layer's stream ended 10 s
// after the three others. Eight GSO packets keep drops at the segment
// scale of a real link.
const tbfMinQueue = 8 * 64 << 10

// nsPrefix starts the name of every namespace a run makes; the PID of the
// run that made it follows, so a later run can remove what a killed one
// left behind.
const nsPrefix = "imgfleet-"

// lab is the namespaced network: a bridge in a hub namespace, one
// namespace per device and one for the upstream, each on a veth whose two
// ends are shaped with tbf (the device end at the device's egress, the
// bridge end at its ingress). Nothing is made in the caller's namespace.
type lab struct {
	run     string // unique prefix of this run's names
	hub, up string
	devices []string
	subnet  string // 10.77.X: devices .1 .. .N, upstream .254
	link    float64
	uplink  float64
	clients []*http.Client
}

// CheckNetns says, in one line, why the namespaced benchmark cannot run
// here: not root, or ip/tc (iproute2) missing.
func CheckNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("bench fleet needs root to build network namespaces and shape links (or use --loopback for an unshaped simulation)")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("bench fleet needs %q from iproute2 (apt-get install iproute2): %w", tool, err)
		}
	}
	return nil
}

// newLab builds the network for n devices; on error it removes what it
// made. Namespaces left by earlier runs whose process is gone are removed
// first.
func newLab(ctx context.Context, n int, link, uplink float64) (*lab, error) {
	removeStale()
	l := &lab{link: link, uplink: uplink,
		run:    fmt.Sprintf("%s%d-%04x", nsPrefix, os.Getpid(), rand.IntN(1<<16)),
		subnet: fmt.Sprintf("10.77.%d", rand.IntN(256))}
	l.hub, l.up = l.run+"-hub", l.run+"-up"
	if err := l.build(ctx, n); err != nil {
		_, _ = l.close(false)
		return nil, err
	}
	return l, nil
}

// build makes the hub, the upstream's namespace and n devices' namespaces.
func (l *lab) build(ctx context.Context, n int) error {
	if err := l.addNS(ctx, l.hub); err != nil {
		return err
	}
	if err := runAll(ctx,
		[]string{"ip", "-n", l.hub, "link", "add", "br0", "type", "bridge"},
		[]string{"ip", "-n", l.hub, "link", "set", "br0", "up"}); err != nil {
		return err
	}
	if err := l.plug(ctx, l.up, "vup", l.subnet+".254", l.uplink); err != nil {
		return err
	}
	for i := range n {
		ns := fmt.Sprintf("%s-d%d", l.run, i+1)
		l.devices = append(l.devices, ns) // before plug: close removes what plug half made
		if err := l.plug(ctx, ns, fmt.Sprintf("vd%d", i+1), fmt.Sprintf("%s.%d", l.subnet, i+1), l.link); err != nil {
			return err
		}
		l.clients = append(l.clients, &http.Client{Transport: newTransport(netnsDialer(ns))})
	}
	return nil
}

// addNS makes namespace ns with its loopback up.
func (l *lab) addNS(ctx context.Context, ns string) error {
	return runAll(ctx, []string{"ip", "netns", "add", ns}, []string{"ip", "-n", ns, "link", "set", "lo", "up"})
}

// plug makes namespace ns with eth0 at addr/24 on the bridge (through
// hub-side veth end hubEnd), both ends shaped at rate.
func (l *lab) plug(ctx context.Context, ns, hubEnd, addr string, rate float64) error {
	if err := l.addNS(ctx, ns); err != nil {
		return err
	}
	return runAll(ctx,
		[]string{"ip", "-n", l.hub, "link", "add", hubEnd, "type", "veth", "peer", "name", "eth0", "netns", ns},
		[]string{"ip", "-n", l.hub, "link", "set", hubEnd, "master", "br0"},
		[]string{"ip", "-n", l.hub, "link", "set", hubEnd, "up"},
		[]string{"ip", "-n", ns, "addr", "add", addr + "/24", "dev", "eth0"},
		[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
		tbf(ns, "eth0", rate),
		tbf(l.hub, hubEnd, rate))
}

// tbf is the tc command that shapes what leaves dev in ns to rate bytes/s.
func tbf(ns, dev string, rate float64) []string {
	// At least 128 KiB: a burst below the 64 KiB of a GSO packet makes tbf
	// cut every such packet in software, which costs more CPU than the whole
	// transfer (measured: 0% idle, 63% system time in the warm scenario).
	burst := max(int64(rate/100), 128<<10) // 10 ms of traffic
	limit := max(int64(rate*tbfLatency.Seconds()), tbfMinQueue) + burst
	return []string{"tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatInt(int64(rate*8), 10) + "bit",
		"burst", strconv.FormatInt(burst, 10),
		"limit", strconv.FormatInt(limit, 10)}
}

func (l *lab) listenUpstream() (net.Listener, string, error) {
	addr := fmt.Sprintf("%s.254:%d", l.subnet, upstreamPort)
	var ln net.Listener
	var lerr error
	if err := inNetns(l.up, func() { ln, lerr = net.Listen("tcp", addr) }); err != nil {
		return nil, "", err
	}
	if lerr != nil {
		return nil, "", fmt.Errorf("upstream listener in %s: %w", l.up, lerr)
	}
	return ln, "http://" + addr, nil
}

func (l *lab) client(i int) *http.Client { return l.clients[i] }

func (l *lab) node(i int) (nodeAddrs, error) {
	ip := fmt.Sprintf("%s.%d", l.subnet, i+1)
	return nodeAddrs{
		prefix: []string{"ip", "netns", "exec", l.devices[i]},
		api:    fmt.Sprintf("127.0.0.1:%d", nsAPIPort),
		gossip: fmt.Sprintf("%s:%d", ip, nsGossipPort),
		p2p:    fmt.Sprintf("/ip4/%s/tcp/%d", ip, nsP2PPort),
		data:   fmt.Sprintf("%s:%d", ip, nsDataPort),
	}, nil
}

func (l *lab) describe() string {
	return fmt.Sprintf("network namespaces %s-*: %d devices on %s.0/24, device links %s and uplink %s, each shaped both ways with tc tbf",
		l.run, len(l.devices), l.subnet, FormatRate(l.link), FormatRate(l.uplink))
}

// close deletes the veths, then the namespaces (the processes in them were
// stopped before). With keep it deletes nothing and says how to.
func (l *lab) close(keep bool) (string, error) {
	for _, c := range l.clients {
		c.CloseIdleConnections()
	}
	names := append([]string{l.hub, l.up}, l.devices...)
	if keep {
		return fmt.Sprintf("kept namespaces %s-* (remove: for ns in %s; do ip netns del $ns; done)", l.run, strings.Join(names, " ")), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if nsExists(l.hub) {
		for i := range len(l.devices) {
			_ = run(ctx, "ip", "-n", l.hub, "link", "del", fmt.Sprintf("vd%d", i+1))
		}
		_ = run(ctx, "ip", "-n", l.hub, "link", "del", "vup")
	}
	for _, ns := range names {
		if nsExists(ns) {
			errs = append(errs, run(ctx, "ip", "netns", "del", ns))
		}
	}
	return "", errors.Join(errs...)
}

func nsExists(ns string) bool {
	_, err := os.Stat("/run/netns/" + ns)
	return err == nil
}

// staleName matches a namespace of this benchmark and captures its run's PID.
var staleName = regexp.MustCompile(`^` + nsPrefix + `(\d+)-[0-9a-f]{4}-`)

// removeStale deletes namespaces that runs, now gone, left behind (a run
// killed with SIGKILL cannot clean up). A namespace whose run's PID is
// alive is left alone.
func removeStale() {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM) {
			continue
		}
		_ = run(ctx, "ip", "netns", "del", e.Name())
	}
}

// runAll runs commands in order and stops at the first failure.
func runAll(ctx context.Context, cmds ...[]string) error {
	for _, c := range cmds {
		if err := run(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// run runs a short command and folds its output into the error.
func run(ctx context.Context, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// Its own process group: a Ctrl-C at the terminal reaches only the
	// benchmark, which then cleans up with commands of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
