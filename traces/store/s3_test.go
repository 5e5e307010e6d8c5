package store_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// A conditional put of unknown size is read into memory to go in one PUT;
// past the bound it fails, saying what to do, and stores nothing.
func TestS3ConditionalUnknownSizeBound(t *testing.T) {
	st := miniotest.Start(t).Store(t)
	for _, opts := range []store.PutOptions{{IfNoneMatch: true}, {IfMatch: md5hex(nil)}} {
		body := bytes.NewReader(make([]byte, 16<<20+1))
		_, err := st.Put(ctx, "big", body, -1, opts)
		if err == nil || !strings.Contains(err.Error(), "pass the size") {
			t.Errorf("Put %+v of 16 MiB + 1 of unknown size: %v, want an error saying to pass the size", opts, err)
		}
		if _, err := st.Stat(ctx, "big"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a refused Put left an object: %v", err)
		}
	}
	if _, err := st.Put(ctx, "big", bytes.NewReader(make([]byte, 16<<20)), -1, store.PutOptions{IfNoneMatch: true}); err != nil {
		t.Errorf("Put of exactly 16 MiB of unknown size: %v", err)
	}
}
