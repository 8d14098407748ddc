package p2p_test

import (
	"fmt"
	"testing"

	"github.com/imgmesh/imgmesh/p2p"
	"github.com/imgmesh/imgmesh/p2p/routertest"
)

func TestMemoryRouterConformance(t *testing.T) {
	routertest.Run(t, func(t *testing.T, n int) []p2p.Router {
		net := p2p.NewMemoryNetwork()
		rs := make([]p2p.Router, n)
		for i := range rs {
			rs[i] = net.NewRouter(fmt.Sprintf("node%d", i), fmt.Sprintf("http://127.0.0.1:%d", 5000+i))
		}
		return rs
	}, routertest.WithdrawIsGlobal())
}
