package piece

// keptBuffers bounds the piece buffers kept for reuse (64 MiB).
const keptBuffers = 64

var buffers = make(chan *[]byte, keptBuffers)

// Buffer returns a piece-sized buffer, reused when one is free. Unlike a
// sync.Pool the free list survives garbage collections: a buffer that went
// back to the operating system costs page faults and zeroing when it comes
// again, and on a busy node (in a VM most of all) that cost more than the
// copy into it. Give it back with Release.
func Buffer() *[]byte {
	select {
	case b := <-buffers:
		return b
	default:
		b := make([]byte, Size)
		return &b
	}
}

// Release gives a buffer from Buffer back; slices of it are fine.
func Release(b *[]byte) {
	if b == nil || cap(*b) < Size {
		return
	}
	full := (*b)[:Size]
	select {
	case buffers <- &full:
	default: // enough kept: the collector takes it
	}
}
