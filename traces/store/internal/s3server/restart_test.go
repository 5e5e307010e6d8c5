package s3server_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/internal/s3server"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
	"github.com/loupe-dev/loupe/traces/store/versitygwtest"
)

// TestRestartKeepsData runs against every S3 server the tests use: objects
// survive Stop and Restart, and the URL's prefix is where they live.
func TestRestartKeepsData(t *testing.T) {
	for name, start := range map[string]func(testing.TB) *s3server.Server{
		"minio": miniotest.Start, "versitygw": versitygwtest.Start,
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			srv := start(t)
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
			if _, err := srv.Store(t).Stat(ctx, "pre/fix/a/b"); err != nil {
				t.Errorf("object not under the URL's prefix: %v", err)
			}
		})
	}
}
