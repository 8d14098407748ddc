package node

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/imgmesh/imgmesh/blobstore"
)

// follower reads a blob while its download goes on: it blocks at the bytes
// not yet written and releases the final byte only once the whole blob
// verified (before the durable commit), so a client never receives a
// complete wrong blob. After commit it reads the stored file.
type follower struct {
	ctx   context.Context // the request's; ends the wait when the client leaves
	dl    *download
	store blobstore.Store
	off   int64
	blob  blobstore.Blob
}

func (f *follower) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		s := f.dl.state()
		switch {
		case s.err != nil:
			return 0, s.err
		case s.committed:
			return f.readCommitted(p)
		case f.off >= s.size && s.verified: // the end, of a blob that verified
			return 0, io.EOF
		}
		// Hold back the last byte until the digest verified.
		limit := s.written
		if !s.verified {
			limit = min(limit, s.size-1)
		}
		if f.off < limit {
			k, err := f.dl.readAt(p[:min(int64(len(p)), limit-f.off)], f.off)
			f.off += int64(k)
			if k > 0 {
				return k, nil
			}
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errReleased) {
				return 0, err
			}
			if !errors.Is(err, errReleased) {
				continue
			}
		}
		select {
		case <-s.changed:
		case <-f.ctx.Done():
			return 0, f.ctx.Err()
		}
	}
}

func (f *follower) readCommitted(p []byte) (int, error) {
	if f.blob == nil {
		b, err := f.store.Open(f.ctx, f.dl.d)
		if err != nil {
			return 0, fmt.Errorf("open committed blob: %w", err)
		}
		f.blob = b
	}
	k, err := f.blob.ReadAt(p, f.off)
	f.off += int64(k)
	if errors.Is(err, io.EOF) && k > 0 {
		err = nil
	}
	return k, err
}

// Seek works within the size the download announced.
func (f *follower) Seek(offset int64, whence int) (int64, error) {
	size := f.dl.state().size
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += f.off
	case io.SeekEnd:
		offset += size
	default:
		return 0, errors.New("seek: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("seek: negative position")
	}
	f.off = offset
	return offset, nil
}

func (f *follower) Close() error {
	if f.blob != nil {
		return f.blob.Close()
	}
	return nil
}
