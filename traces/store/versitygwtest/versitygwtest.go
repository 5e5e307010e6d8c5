// Package versitygwtest runs a real versitygw server (Versity's S3 gateway,
// posix backend) for tests, in the manner of net/http/httptest and
// miniotest: Start launches one on 127.0.0.1 with a free port, a temporary
// data folder and random root credentials, creates a bucket, and stops it
// when the test ends. It is the second, independent S3 implementation the
// store's conformance suite runs against.
//
// The server binary is $LOUPE_VERSITYGW_BIN, else <repo>/.cache/bin/versitygw,
// else versitygw on PATH. Without one, a test fails under CI=true and skips
// otherwise, naming the command that installs it.
//
//	srv := versitygwtest.Start(t)
//	st, err := store.Open(ctx, srv.URL("some/prefix")) // or srv.Store(t)
//	...
//	srv.Stop()    // an outage; the data folder is kept
//	srv.Restart() // same port, same data
package versitygwtest

import (
	"testing"

	"github.com/loupe-dev/loupe/traces/store/internal/s3server"
)

// Version is the versitygw release the tests are written against.
const Version = "v1.8.0"

// Server is a running versitygw server owned by one test.
type Server = s3server.Server

// healthPath is the path versitygw is told to answer 200 on once it serves.
const healthPath = "/loupe-health"

var spec = s3server.Spec{
	Name:      "versitygw",
	BinEnv:    "LOUPE_VERSITYGW_BIN",
	Module:    "github.com/versity/versitygw/cmd/versitygw@" + Version,
	ReadyPath: healthPath,
	Command: func(s *s3server.Server) (args, env []string) {
		// Global flags go before the backend subcommand; the posix
		// backend keeps each bucket as a folder of DataDir and object
		// metadata (ETags) in extended attributes.
		return []string{
			"--port", s.Endpoint,
			"--access", s.AccessKey, "--secret", s.SecretKey,
			"--region", "us-east-1",
			"--health", healthPath,
			"--quiet",
			"posix", s.DataDir,
		}, nil
	},
}

// Start starts a versitygw server and creates a bucket on it; the server
// stops when the test and its subtests finish.
func Start(t testing.TB) *Server {
	t.Helper()
	return s3server.Start(t, spec)
}

// Binary returns the path of the versitygw binary, failing (CI=true) or
// skipping the test when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	return s3server.Binary(t, spec)
}
