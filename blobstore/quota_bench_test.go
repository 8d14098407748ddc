package blobstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/imgmesh/imgmesh/blobstore"
	"github.com/imgmesh/imgmesh/blobstore/storetest"
)

// BenchmarkEvict: one GC run over a file store of images × 5 blobs
// (manifest, config, 3 layers of 4 KiB), evicting the older half. What it
// costs is the catalog (every manifest read and parsed) and the deletes.
func BenchmarkEvict(b *testing.B) {
	for _, images := range []int{100, 1000} {
		b.Run(fmt.Sprintf("blobs=%d", images*5), func(b *testing.B) {
			ctx := context.Background()
			for i := range b.N {
				b.StopTimer()
				s := benchStore(b)
				clock := &testClock{t: time.Now().Add(-time.Hour)}
				s.SetClock(clock.now)
				for j := range images {
					clock.tick()
					seed := uint64(i*1_000_000 + j*10)
					putImage(b, s, fmt.Sprintf("r%d", j), "v1", fmt.Sprintf("arch%d", j),
						storetest.Blob(seed, 4096), storetest.Blob(seed+1, 4096), storetest.Blob(seed+2, 4096))
				}
				used, _, _ := s.Usage(ctx)
				b.StartTimer()
				st, err := blobstore.Evict(ctx, s, used/2, nil)
				b.StopTimer()
				if err != nil || st.Images < images/2-1 || st.After > used/2 {
					b.Fatalf("Evict = %+v, %v", st, err)
				}
				b.ReportMetric(float64(st.Blobs), "blobs_evicted")
				b.ReportMetric(float64(st.Bytes)/float64(used-used/2), "bytes_evicted/bytes_asked")
				b.StartTimer()
			}
		})
	}
}
