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
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/loupe-dev/loupe/traces/store"
)

// Version is the MinIO module version the tests are written against.
const Version = "v0.0.0-20260212201848-7aac2a2c5b7c"

// startTimeout bounds how long a server may take to become ready.
const startTimeout = 60 * time.Second

// Server is a running MinIO server owned by one test.
type Server struct {
	// Endpoint is HOST:PORT of the S3 API.
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string
	// Bucket exists when Start returns.
	Bucket string

	t       testing.TB
	bin     string
	dataDir string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Start starts a MinIO server and creates a bucket on it; the server stops
// when the test and its subtests finish.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary(t)
	s := &Server{
		AccessKey: "loupe-" + randHex(4),
		SecretKey: randHex(16),
		Bucket:    "loupe-test",
		t:         t,
		bin:       bin,
		dataDir:   filepath.Join(t.TempDir(), "data"),
	}
	s.logPath = filepath.Join(filepath.Dir(s.dataDir), "minio.log")
	port, err := freePort()
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", port)
	t.Cleanup(s.Stop)
	s.start()
	c := s.client()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("miniotest: creating bucket %s: %v\n%s", s.Bucket, err, s.logTail())
	}
	return s
}

// Binary returns the path of the MinIO server binary, failing (CI=true) or
// skipping the test when there is none.
func Binary(t testing.TB) string {
	t.Helper()
	var tried []string
	if p := os.Getenv("LOUPE_MINIO_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, "LOUPE_MINIO_BIN="+p)
	}
	root, err := repoRoot()
	if err == nil {
		p := filepath.Join(root, ".cache", "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p
	}
	tried = append(tried, "minio on PATH")
	if root == "" {
		root = "<repo>"
	}
	msg := fmt.Sprintf("miniotest: no MinIO server binary (tried %s); install it with:\n\tGOBIN=%s go install github.com/minio/minio@%s\n"+
		"(or `make tools`), or set LOUPE_MINIO_BIN to a minio binary",
		strings.Join(tried, ", "), filepath.Join(root, ".cache", "bin"), Version)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// repoRoot finds the module root above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// start launches the server process and waits until it serves requests.
func (s *Server) start() {
	s.t.Helper()
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatalf("miniotest: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "server", "--quiet", "--address", s.Endpoint, "--console-address", "127.0.0.1:0", s.dataDir)
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+s.AccessKey,
		"MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=1",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("miniotest: starting %s: %v", s.bin, err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(s.exited)
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := http.Get("http://" + s.Endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.exited:
			s.t.Fatalf("miniotest: minio exited during start\n%s", s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("miniotest: minio not ready after %v\n%s", startTimeout, s.logTail())
		}
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s). It is safe to
// call more than once; the data folder is kept for Restart.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Restart stops the server if it runs and starts it again on the same port
// with the same data, as after an outage.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// URL returns an s3:// URL for store.Open that reaches this server's bucket
// under prefix (may be empty), with the credentials in a file.
func (s *Server) URL(prefix string) string {
	s.t.Helper()
	cred := filepath.Join(filepath.Dir(s.dataDir), "credentials")
	body := fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", s.AccessKey, s.SecretKey)
	if err := os.WriteFile(cred, []byte(body), 0o600); err != nil {
		s.t.Fatalf("miniotest: %v", err)
	}
	q := url.Values{
		"endpoint": {s.Endpoint}, "secure": {"false"}, "region": {"us-east-1"},
		"path_style": {"true"}, "credentials_file": {cred},
	}
	u := url.URL{Scheme: "s3", Host: s.Bucket, Path: "/" + strings.Trim(prefix, "/"), RawQuery: q.Encode()}
	return u.String()
}

// Config returns the store configuration that reaches this server's bucket.
func (s *Server) Config() store.S3Config {
	return store.S3Config{
		Endpoint: s.Endpoint, Bucket: s.Bucket, Region: "us-east-1", PathStyle: true,
		AccessKey: s.AccessKey, SecretKey: s.SecretKey,
	}
}

// Store returns a store on this server's bucket.
func (s *Server) Store(t testing.TB) store.Store {
	t.Helper()
	st, err := store.NewS3(context.Background(), s.Config())
	if err != nil {
		t.Fatalf("miniotest: %v", err)
	}
	return st
}

// Client returns a plain minio-go client for this server, for tests that
// compare against or look behind the store.
func (s *Server) Client() *minio.Client { return s.client() }

func (s *Server) client() *minio.Client {
	s.t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		s.t.Fatalf("miniotest: %v", err)
	}
	return c
}

// logTail returns the end of the server's log, for failure messages.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return "minio log (" + s.logPath + "):\n" + string(bytes.TrimSpace(b))
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("finding a free port: %v", err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
