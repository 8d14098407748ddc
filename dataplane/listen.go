package dataplane

import (
	"net"
)

// unsentLowWater bounds the bytes of a data-plane response that wait unsent
// in the kernel (TCP_NOTSENT_LOWAT). A piece handler returns, and frees its
// upload slot, once its body is on its way rather than once it is queued:
// with the kernel's own send buffers (autotuned to megabytes) a node
// answering piece requests took the next one while its last megabyte still
// waited, and a seed in a 10-node rollout had 12 pieces in flight for 4
// slots, each at a twelfth of its uplink, holding its peers' requests for
// a second each. With 64 KiB: warm rollout 21.3-21.6 s against 24.1-26.7 s
// (bench fleet, default run), and the same loopback throughput (the bytes
// in flight are still the kernel's to size).
const unsentLowWater = 64 << 10

// Listen opens the data plane's TCP listener at addr: responses on its
// connections keep at most unsentLowWater bytes unsent in the kernel.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return lowWaterListener{ln}, nil
}

type lowWaterListener struct{ net.Listener }

func (l lowWaterListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok && err == nil {
		setUnsentLowWater(tc, unsentLowWater) // best effort: a kernel without it sends all the same
	}
	return c, err
}
