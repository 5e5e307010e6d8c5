// Package s3server runs a real S3 server program for tests: it finds the
// binary, starts it on 127.0.0.1 with a free port, a temporary data folder
// and random root credentials, waits until it serves, creates a bucket, and
// stops it when the test ends. A Spec says how to run one server program;
// the public harnesses (versitygwtest) are a Spec each.
package s3server

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

// startTimeout bounds how long a server may take to become ready.
const startTimeout = 60 * time.Second

// Spec describes one S3 server program.
type Spec struct {
	// Name is the binary's name on PATH and in <repo>/.cache/bin.
	Name string
	// BinEnv names the environment variable that may point at the binary.
	BinEnv string
	// Module is the go install argument (path@version) that builds it.
	Module string
	// ReadyPath is an HTTP path that answers 200 once the server serves.
	ReadyPath string
	// Command returns the arguments and extra environment that run the
	// server for s (its Endpoint, credentials and DataDir are set).
	Command func(s *Server) (args, env []string)
}

// Server is a running S3 server owned by one test.
type Server struct {
	// Endpoint is HOST:PORT of the S3 API.
	Endpoint string
	// AccessKey and SecretKey are the root credentials.
	AccessKey, SecretKey string
	// Bucket exists when Start returns.
	Bucket string
	// DataDir is the folder the server keeps objects in.
	DataDir string

	spec    Spec
	t       testing.TB
	bin     string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// Start starts the server spec describes and creates a bucket on it; the
// server stops when the test and its subtests finish.
func Start(t testing.TB, spec Spec) *Server {
	t.Helper()
	bin := Binary(t, spec)
	dir := t.TempDir()
	s := &Server{
		AccessKey: "loupe-" + randHex(4),
		SecretKey: randHex(16),
		Bucket:    "loupe-test",
		DataDir:   filepath.Join(dir, "data"),
		spec:      spec,
		t:         t,
		bin:       bin,
		logPath:   filepath.Join(dir, spec.Name+".log"),
	}
	if err := os.MkdirAll(s.DataDir, 0o755); err != nil {
		t.Fatalf("%s: %v", spec.Name, err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatalf("%s: %v", spec.Name, err)
	}
	s.Endpoint = net.JoinHostPort("127.0.0.1", port)
	t.Cleanup(s.Stop)
	s.start()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.Client().MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{}); err != nil {
		t.Fatalf("%s: creating bucket %s: %v\n%s", spec.Name, s.Bucket, err, s.logTail())
	}
	return s
}

// Binary returns the path of spec's server binary: $BinEnv, else
// <repo>/.cache/bin/NAME, else NAME on PATH. Without one it fails the test
// under CI=true and skips it otherwise, naming the command that installs it.
func Binary(t testing.TB, spec Spec) string {
	t.Helper()
	var tried []string
	if p := os.Getenv(spec.BinEnv); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, spec.BinEnv+"="+p)
	}
	root, err := repoRoot()
	if err == nil {
		p := filepath.Join(root, ".cache", "bin", spec.Name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		tried = append(tried, p)
	}
	if p, err := exec.LookPath(spec.Name); err == nil {
		return p
	}
	tried = append(tried, spec.Name+" on PATH")
	if root == "" {
		root = "<repo>"
	}
	msg := fmt.Sprintf("%s: no server binary (tried %s); install it with:\n\tGOBIN=%s go install %s\n"+
		"(or `make tools`), or set %s to a %s binary",
		spec.Name, strings.Join(tried, ", "), filepath.Join(root, ".cache", "bin"), spec.Module, spec.BinEnv, spec.Name)
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
		s.t.Fatalf("%s: %v", s.spec.Name, err)
	}
	defer logf.Close()
	args, env := s.spec.Command(s)
	cmd := exec.Command(s.bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The server dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("%s: starting %s: %v", s.spec.Name, s.bin, err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { cmd.Wait(); close(exited) }(s.exited)
	deadline := time.Now().Add(startTimeout)
	for {
		resp, err := http.Get("http://" + s.Endpoint + s.spec.ReadyPath)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-s.exited:
			s.t.Fatalf("%s: server exited during start\n%s", s.spec.Name, s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			s.t.Fatalf("%s: server not ready after %v\n%s", s.spec.Name, startTimeout, s.logTail())
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
	cred := filepath.Join(filepath.Dir(s.DataDir), "credentials")
	body := fmt.Sprintf("AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n", s.AccessKey, s.SecretKey)
	if err := os.WriteFile(cred, []byte(body), 0o600); err != nil {
		s.t.Fatalf("%s: %v", s.spec.Name, err)
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
		t.Fatalf("%s: %v", s.spec.Name, err)
	}
	return st
}

// Client returns a plain minio-go client for this server, for tests that
// compare against or look behind the store.
func (s *Server) Client() *minio.Client {
	s.t.Helper()
	c, err := minio.New(s.Endpoint, &minio.Options{
		Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: "us-east-1",
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		s.t.Fatalf("%s: %v", s.spec.Name, err)
	}
	return c
}

// logTail returns the end of the server's log, for failure messages.
func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return s.spec.Name + " log (" + s.logPath + "):\n" + string(bytes.TrimSpace(b))
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
