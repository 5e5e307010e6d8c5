package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// DefaultPartSize is the multipart part size S3 uploads of known size use
// unless told otherwise. Objects up to it go in one PUT, which against MinIO
// is faster than a multipart upload of the same bytes; bigger ones are sent
// in parts of this size, several at once, read straight from the file.
const DefaultPartSize = 64 << 20

// streamPartSize bounds the part size of uploads of unknown size, for which
// the client buffers whole parts in memory.
const streamPartSize = 16 << 20

// S3Config configures an S3-compatible store.
type S3Config struct {
	// Endpoint is HOST or HOST:PORT of the S3 API.
	Endpoint string
	// Bucket must exist; Loupe never creates buckets.
	Bucket string
	// Prefix, when set, is prepended (with a slash) to every key, so several
	// deployments can share a bucket.
	Prefix string
	// Region; empty lets the client ask the server.
	Region string
	// Secure selects HTTPS.
	Secure bool
	// PathStyle forces path-style requests (http://host/bucket/key), which
	// most self-hosted servers want; false lets the client choose.
	PathStyle bool
	// PartSize is the multipart part size in bytes; 0 means DefaultPartSize.
	PartSize uint64

	// Credentials: AccessKey/SecretKey when set; else CredentialsFile (lines
	// AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=...); else the
	// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables;
	// else the AWS shared credentials file (AWS_SHARED_CREDENTIALS_FILE or
	// ~/.aws/credentials) with Profile (default AWS_PROFILE or "default").
	AccessKey, SecretKey, SessionToken string
	CredentialsFile                    string
	Profile                            string

	// Transport overrides the HTTP transport (tests, proxies).
	Transport http.RoundTripper
}

// s3Store stores objects in an S3 bucket through minio-go.
type s3Store struct {
	c    *minio.Client
	cfg  S3Config
	base string // cfg.Prefix + "/" or ""
}

// NewS3 returns a store for cfg. It resolves credentials but does not contact
// the server.
func NewS3(ctx context.Context, cfg S3Config) (Store, error) {
	if err := validBucket(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("s3 store: %v", err)
	}
	if cfg.Endpoint == "" {
		return nil, fmt.Errorf("s3 store: no endpoint; set endpoint=HOST:PORT")
	}
	cfg.Prefix = strings.Trim(cfg.Prefix, "/")
	if cfg.Prefix != "" {
		if err := ValidateKey(cfg.Prefix); err != nil {
			return nil, fmt.Errorf("s3 store: prefix: %w", err)
		}
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	creds, err := resolveCredentials(cfg)
	if err != nil {
		return nil, fmt.Errorf("s3 store s3://%s: %w", cfg.Bucket, err)
	}
	opts := &minio.Options{
		Creds:     creds,
		Secure:    cfg.Secure,
		Region:    cfg.Region,
		Transport: cfg.Transport,
		// The uploader retries with its own backoff; the client's retries
		// only smooth over a blip.
		MaxRetries: 3,
	}
	if cfg.PathStyle {
		opts.BucketLookup = minio.BucketLookupPath
	}
	c, err := minio.New(cfg.Endpoint, opts)
	if err != nil {
		return nil, fmt.Errorf("s3 store %s: %v", cfg.Endpoint, err)
	}
	s := &s3Store{c: c, cfg: cfg}
	if cfg.Prefix != "" {
		s.base = cfg.Prefix + "/"
	}
	return s, nil
}

// resolveCredentials picks the first source of credentials that has them, in
// the order S3Config documents.
func resolveCredentials(cfg S3Config) (*credentials.Credentials, error) {
	switch {
	case cfg.AccessKey != "" || cfg.SecretKey != "":
		if cfg.AccessKey == "" || cfg.SecretKey == "" {
			return nil, errors.New("credentials need both an access key and a secret key")
		}
		return credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, cfg.SessionToken), nil
	case cfg.CredentialsFile != "":
		data, err := os.ReadFile(cfg.CredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("credentials_file: %v", err)
		}
		a, s, t, err := parseCredentials(data)
		if err != nil {
			return nil, fmt.Errorf("credentials_file %s: %v", cfg.CredentialsFile, err)
		}
		return credentials.NewStaticV4(a, s, t), nil
	case os.Getenv("AWS_ACCESS_KEY_ID") != "" && os.Getenv("AWS_SECRET_ACCESS_KEY") != "":
		return credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), os.Getenv("AWS_SESSION_TOKEN")), nil
	}
	file := os.Getenv("AWS_SHARED_CREDENTIALS_FILE")
	if file == "" {
		if home, err := os.UserHomeDir(); err == nil {
			file = filepath.Join(home, ".aws", "credentials")
		}
	}
	if file != "" {
		if _, err := os.Stat(file); err == nil {
			creds := credentials.NewFileAWSCredentials(file, cfg.Profile)
			v, err := creds.GetWithContext(nil)
			if err == nil && v.AccessKeyID != "" && v.SecretAccessKey != "" {
				return creds, nil
			}
			return nil, fmt.Errorf("shared credentials file %s has no usable profile %q: %v", file, cfg.Profile, err)
		}
	}
	return nil, errors.New("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, " +
		"add credentials_file=PATH to the store URL (a file with AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines), " +
		"or create ~/.aws/credentials")
}

func (s *s3Store) String() string {
	return fmt.Sprintf("s3://%s/%s (endpoint %s)", s.cfg.Bucket, s.cfg.Prefix, s.cfg.Endpoint)
}

// object validates key and returns the bucket's object name for it.
func (s *s3Store) object(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	return s.base + key, nil
}

// maxConditionalUnknownSize bounds what a conditional put of unknown size
// reads into memory to learn its size.
const maxConditionalUnknownSize = streamPartSize

// Put implements Store. Conditional puts map to If-None-Match: * and
// If-Match: "etag" and always go in a single PUT, where every server checks
// them (the package doc says why); a single PUT needs the size, so a
// conditional put of unknown size reads its body into memory first.
func (s *s3Store) Put(ctx context.Context, key string, r io.Reader, size int64, opts PutOptions) (ObjectInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	if opts.IfNoneMatch && opts.IfMatch != "" {
		return ObjectInfo{}, fmt.Errorf("put %s: IfNoneMatch and IfMatch together can never both hold", key)
	}
	po := minio.PutObjectOptions{ContentType: opts.ContentType, PartSize: s.cfg.PartSize}
	if size < 0 {
		po.PartSize = min(po.PartSize, streamPartSize)
	}
	if opts.IfNoneMatch {
		po.SetMatchETagExcept("*")
	}
	if opts.IfMatch != "" {
		po.SetMatchETag(strings.Trim(opts.IfMatch, `"`))
	}
	conditional := opts.IfNoneMatch || opts.IfMatch != ""
	var body []byte // a conditional body held in memory, to recognise it after a reset
	if conditional {
		po.DisableMultipart = true
		if size < 0 || size <= maxConditionalUnknownSize {
			b, err := io.ReadAll(io.LimitReader(r, maxConditionalUnknownSize+1))
			if err != nil {
				return ObjectInfo{}, fmt.Errorf("put %s: reading the body: %w", key, err)
			}
			if len(b) > maxConditionalUnknownSize {
				return ObjectInfo{}, fmt.Errorf("put %s: a conditional put of unknown size may be at most %d bytes; pass the size", key, maxConditionalUnknownSize)
			}
			body, r, size = b, bytes.NewReader(b), int64(len(b))
		}
	}
	info, err := s.c.PutObject(ctx, s.cfg.Bucket, obj, r, size, po)
	if err != nil && conditional && connectionDropped(err) {
		if oi, ok, rerr := s.resolveDropped(ctx, key, obj, body, opts); ok {
			return oi, rerr
		}
	}
	if err != nil {
		if conditional && errors.Is(s.mapErr(err), ErrNotFound) {
			// S3 answers If-Match on a missing object with 404.
			return ObjectInfo{}, fmt.Errorf("put %s: %w: no such object", key, ErrPrecondition)
		}
		return ObjectInfo{}, fmt.Errorf("put %s: %w", key, s.mapErr(err))
	}
	return ObjectInfo{Key: key, Size: info.Size, ETag: info.ETag, LastModified: info.LastModified}, nil
}

// connectionDropped reports a request whose connection was reset or closed
// while the body was being sent. S3 servers that refuse a conditional PUT
// (412) often answer as soon as the headers arrive and close the
// connection, and the client may see the reset instead of the answer.
func connectionDropped(err error) bool {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "connection reset by peer") || strings.Contains(msg, "broken pipe")
}

// resolveDropped decides the outcome of a conditional put whose connection
// dropped, by looking at the object: our own bytes (the ETag of a single PUT
// is their MD5) mean it landed; an object that breaks the condition means
// the server refused ours. ok is false when the object says neither, and
// the original error stands.
func (s *s3Store) resolveDropped(ctx context.Context, key, obj string, body []byte, opts PutOptions) (oi ObjectInfo, ok bool, err error) {
	st, serr := s.c.StatObject(ctx, s.cfg.Bucket, obj, minio.StatObjectOptions{})
	if serr != nil {
		if opts.IfMatch != "" && errors.Is(s.mapErr(serr), ErrNotFound) {
			return ObjectInfo{}, true, fmt.Errorf("put %s: %w: no such object", key, ErrPrecondition)
		}
		return ObjectInfo{}, false, nil
	}
	if body != nil {
		sum := md5.Sum(body)
		if strings.Trim(st.ETag, `"`) == hex.EncodeToString(sum[:]) {
			return s.info(st), true, nil
		}
	}
	if opts.IfNoneMatch || strings.Trim(st.ETag, `"`) != strings.Trim(opts.IfMatch, `"`) {
		return ObjectInfo{}, true, fmt.Errorf("put %s: %w: the server refused the body and the object breaks the condition", key, ErrPrecondition)
	}
	return ObjectInfo{}, false, nil
}

// Get implements Store.
func (s *s3Store) Get(ctx context.Context, key string) (io.ReadCloser, ObjectInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, ObjectInfo{}, err
	}
	o, err := s.c.GetObject(ctx, s.cfg.Bucket, obj, minio.GetObjectOptions{})
	if err != nil {
		return nil, ObjectInfo{}, fmt.Errorf("get %s: %w", key, s.mapErr(err))
	}
	// GetObject is lazy: Stat makes the request and reports a missing key.
	st, err := o.Stat()
	if err != nil {
		o.Close()
		return nil, ObjectInfo{}, fmt.Errorf("get %s: %w", key, s.mapErr(err))
	}
	return o, s.info(st), nil
}

// Stat implements Store.
func (s *s3Store) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	st, err := s.c.StatObject(ctx, s.cfg.Bucket, obj, minio.StatObjectOptions{})
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("stat %s: %w", key, s.mapErr(err))
	}
	return s.info(st), nil
}

// Delete implements Store.
func (s *s3Store) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	if err := s.c.RemoveObject(ctx, s.cfg.Bucket, obj, minio.RemoveObjectOptions{}); err != nil {
		if err = s.mapErr(err); errors.Is(err, ErrNotFound) {
			return nil
		}
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List implements Store with ListObjectsV2 and StartAfter. It reads one
// object beyond limit to know whether the listing is complete.
func (s *s3Store) List(ctx context.Context, prefix, cursor string, limit int) ([]ObjectInfo, string, error) {
	if err := validatePrefix(prefix); err != nil {
		return nil, "", err
	}
	if limit <= 0 {
		limit = DefaultListLimit
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the client's listing goroutine early
	lo := minio.ListObjectsOptions{Prefix: s.base + prefix, Recursive: true, MaxKeys: min(limit+1, 1000)}
	if cursor != "" {
		lo.StartAfter = s.base + cursor
	}
	var out []ObjectInfo
	for o := range s.c.ListObjects(ctx, s.cfg.Bucket, lo) {
		if o.Err != nil {
			return nil, "", fmt.Errorf("list %q after %q: %w", prefix, cursor, s.mapErr(o.Err))
		}
		if len(out) == limit {
			return out, out[limit-1].Key, nil
		}
		out = append(out, s.info(o))
	}
	return out, "", nil
}

func (s *s3Store) info(o minio.ObjectInfo) ObjectInfo {
	return ObjectInfo{Key: strings.TrimPrefix(o.Key, s.base), Size: o.Size, ETag: strings.Trim(o.ETag, `"`), LastModified: o.LastModified}
}

// mapErr turns S3 error codes into the Store's errors and adds what to do
// about the ones an operator must fix.
func (s *s3Store) mapErr(err error) error {
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket":
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case resp.Code == "PreconditionFailed" || resp.StatusCode == http.StatusPreconditionFailed:
		return fmt.Errorf("%w: %v", ErrPrecondition, err)
	case resp.Code == "NoSuchBucket":
		return fmt.Errorf("%v: create bucket %q on %s first (for example `mc mb ALIAS/%s`)", err, s.cfg.Bucket, s.cfg.Endpoint, s.cfg.Bucket)
	case resp.Code == "AccessDenied" || resp.Code == "InvalidAccessKeyId" || resp.Code == "SignatureDoesNotMatch":
		return fmt.Errorf("%v: check the S3 credentials and the bucket policy for %q", err, s.cfg.Bucket)
	}
	return err
}
