//go:build !linux

package dataplane

import "net"

func setUnsentLowWater(*net.TCPConn, int) {}
