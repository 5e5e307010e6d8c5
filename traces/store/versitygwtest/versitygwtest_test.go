package versitygwtest_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/versitygwtest"
)

func TestRestartKeepsData(t *testing.T) {
	ctx := context.Background()
	srv := versitygwtest.Start(t)
	st, err := store.Open(ctx, srv.URL("pre/fix"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Put(ctx, "a/b", strings.NewReader("kept"), 4, store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := st.Stat(ctx, "a/b"); err == nil {
		t.Fatal("Stat succeeded while the server was stopped")
	}
	srv.Restart()
	rc, _, err := st.Get(ctx, "a/b")
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	defer rc.Close()
	if b, _ := io.ReadAll(rc); string(b) != "kept" {
		t.Errorf("after Restart got %q", b)
	}
	// The prefix in the URL is where the object really lives in the bucket.
	if _, err := srv.Store(t).Stat(ctx, "pre/fix/a/b"); err != nil {
		t.Errorf("object not under the URL's prefix: %v", err)
	}
}
