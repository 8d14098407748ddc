package p2p_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(probeEnv) != "" {
		os.Exit(runProbe())
	}
	goleak.VerifyTestMain(m)
}
