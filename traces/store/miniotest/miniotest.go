// Package miniotest runs a real MinIO server for tests, in the manner of
// net/http/httptest: Start launches one on 127.0.0.1 with a free port and a
// temporary data folder, creates a bucket, and stops it when the test ends.
//
// The server binary is $LOUPE_MINIO_BIN, else <repo>/.cache/bin/minio, else
// minio on PATH. Without one, a test fails under CI=true and skips otherwise,
// naming the command that installs it.
//
//	srv := miniotest.Start(t)
//	st, err := store.Open(ctx, srv.URL("some/prefix")) // or srv.Store(t)
//	...
//	srv.Stop()    // an outage; the data folder is kept
//	srv.Restart() // same port, same data
package miniotest

import (
	"testing"

	"github.com/loupe-dev/loupe/traces/store/internal/s3server"
)

// Version is the MinIO module version the tests are written against.
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// Server is a running MinIO server owned by one test.
type Server = s3server.Server

var spec = s3server.Spec{
	Name:      "minio",
	BinEnv:    "LOUPE_MINIO_BIN",
	Module:    "github.com/minio/minio@" + Version,
	ReadyPath: "/minio/health/ready",
	Command: func(s *s3server.Server) (args, env []string) {
		return []string{"server", "--quiet", "--address", s.Endpoint, "--console-address", "127.0.0.1:0", s.DataDir},
			[]string{
				"MINIO_ROOT_USER=" + s.AccessKey,
				"MINIO_ROOT_PASSWORD=" + s.SecretKey,
				"MINIO_BROWSER=off",
				"MINIO_UPDATE=off",
				"MINIO_CI_CD=1",
			}
	},
}

// Start starts a MinIO server and creates a bucket on it; the server stops
// when the test and its subtests finish.
func Start(t testing.TB) *Server {
	t.Helper()
	return s3server.Start(t, spec)
}

// Binary returns the path of the MinIO server binary, failing (CI=true) or
// skipping the test when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	return s3server.Binary(t, spec)
}
