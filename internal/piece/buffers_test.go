package piece

import "testing"

func TestBufferReuse(t *testing.T) {
	b := Buffer()
	if len(*b) != Size {
		t.Fatalf("len %d, want %d", len(*b), Size)
	}
	(*b)[0] = 7
	short := (*b)[:10]
	Release(&short)
	again := Buffer()
	if len(*again) != Size || &(*again)[0] != &(*b)[0] {
		t.Fatal("a released buffer was not reused at full length")
	}
	Release(again)
	var kept []*[]byte
	for range keptBuffers + 8 {
		kept = append(kept, Buffer())
	}
	for _, k := range kept {
		Release(k)
	}
	if n := len(buffers); n != keptBuffers {
		t.Fatalf("%d buffers kept, want at most %d", n, keptBuffers)
	}
	small := make([]byte, 10)
	Release(&small) // not a piece buffer: ignored
	if n := len(buffers); n != keptBuffers {
		t.Fatalf("%d buffers kept after a foreign one", n)
	}
	for range keptBuffers {
		<-buffers
	}
}
