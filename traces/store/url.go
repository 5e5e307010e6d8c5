package store

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
)

// Location is what a store URL names: a local directory or an S3 bucket.
// Exactly one of Dir and S3 is set.
type Location struct {
	// Dir is the absolute root directory of a file:// store.
	Dir string
	// S3 is the configuration of an s3:// store; credentials are not
	// resolved yet (NewS3 does that).
	S3 *S3Config
}

// s3Params are the query parameters an s3:// URL may carry.
var s3Params = map[string]bool{
	"endpoint": true, "secure": true, "region": true, "path_style": true,
	"credentials_file": true, "profile": true, "part_size_mib": true,
}

// ParseURL parses a store URL without touching the network or the disk:
//
//	file:///ABSOLUTE/DIR
//	s3://BUCKET[/PREFIX]?endpoint=HOST:PORT&secure=false&region=R&path_style=true
//	   [&credentials_file=PATH][&profile=NAME][&part_size_mib=N]
//
// Unknown query parameters are an error, so a typo never silently falls back
// to a default.
func ParseURL(raw string) (Location, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Location{}, fmt.Errorf("store URL %q: %v; use file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT", raw, err)
	}
	switch u.Scheme {
	case "file":
		return parseFileURL(raw, u)
	case "s3":
		return parseS3URL(raw, u)
	default:
		return Location{}, fmt.Errorf("store URL %q: unknown scheme %q; use file:///DIR or s3://BUCKET/PREFIX?endpoint=HOST:PORT", raw, u.Scheme)
	}
}

func parseFileURL(raw string, u *url.URL) (Location, error) {
	if u.Opaque != "" || (u.Host != "" && u.Host != "localhost") || !strings.HasPrefix(u.Path, "/") {
		return Location{}, fmt.Errorf("store URL %q: a file URL needs an absolute path, as in file:///var/lib/loupe/store", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return Location{}, fmt.Errorf("store URL %q: a file URL takes no query or fragment", raw)
	}
	if strings.ContainsRune(u.Path, 0) {
		return Location{}, fmt.Errorf("store URL %q: path contains a NUL byte", raw)
	}
	return Location{Dir: path.Clean(u.Path)}, nil
}

func parseS3URL(raw string, u *url.URL) (Location, error) {
	bad := func(format string, args ...any) (Location, error) {
		return Location{}, fmt.Errorf("store URL %q: "+format, append([]any{raw}, args...)...)
	}
	if u.Opaque != "" || u.User != nil || u.Fragment != "" {
		return bad("use s3://BUCKET/PREFIX?endpoint=HOST:PORT (no user info, no fragment); pass credentials by environment or credentials_file")
	}
	bucket := u.Host
	if err := validBucket(bucket); err != nil {
		return bad("%v", err)
	}
	prefix := strings.Trim(u.Path, "/")
	if prefix != "" {
		if err := ValidateKey(prefix); err != nil {
			return bad("prefix: %v", err)
		}
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad("query: %v", err)
	}
	for k, v := range q {
		if !s3Params[k] {
			return bad("unknown parameter %q; known: endpoint, secure, region, path_style, credentials_file, profile, part_size_mib", k)
		}
		if len(v) != 1 {
			return bad("parameter %q given %d times", k, len(v))
		}
	}
	cfg := &S3Config{
		Bucket:          bucket,
		Prefix:          prefix,
		Endpoint:        q.Get("endpoint"),
		Region:          q.Get("region"),
		CredentialsFile: q.Get("credentials_file"),
		Profile:         q.Get("profile"),
		Secure:          true,
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = "s3.amazonaws.com"
	}
	if _, _, err := net.SplitHostPort(cfg.Endpoint); err != nil && strings.Contains(cfg.Endpoint, ":") {
		return bad("endpoint %q: %v; use HOST or HOST:PORT", cfg.Endpoint, err)
	}
	if strings.ContainsAny(cfg.Endpoint, "/?#@ ") {
		return bad("endpoint %q: use HOST or HOST:PORT without a scheme or path", cfg.Endpoint)
	}
	for name, dst := range map[string]*bool{"secure": &cfg.Secure, "path_style": &cfg.PathStyle} {
		if s := q.Get(name); s != "" {
			b, err := strconv.ParseBool(s)
			if err != nil {
				return bad("%s=%q is not true or false", name, s)
			}
			*dst = b
		}
	}
	if s := q.Get("part_size_mib"); s != "" {
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil || n < 5 || n > 5120 {
			return bad("part_size_mib=%q: want a whole number from 5 to 5120", s)
		}
		cfg.PartSize = n << 20
	}
	return Location{S3: cfg}, nil
}

// validBucket checks the S3 bucket naming rules that matter for URLs:
// 3 to 63 characters of lowercase letters, digits, dots and hyphens,
// starting and ending with a letter or digit.
func validBucket(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bucket %q must be 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && c != '.' && c != '-' || (i == 0 || i == len(b)-1) && !alnum {
			return fmt.Errorf("bucket %q: use lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit", b)
		}
	}
	return nil
}

// Open opens the store that rawURL names (see ParseURL). Opening an S3 store
// does not contact the server, so an agent starts even while the store is down.
func Open(ctx context.Context, rawURL string) (Store, error) {
	loc, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if loc.S3 != nil {
		return NewS3(ctx, *loc.S3)
	}
	return NewDir(loc.Dir)
}

// parseCredentials reads a credentials file of KEY=VALUE lines
// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN);
// blank lines, lines starting with '#' and other keys are ignored.
func parseCredentials(data []byte) (access, secret, token string, err error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			return "", "", "", fmt.Errorf("line %d: want KEY=VALUE", n)
		}
		v = strings.Trim(strings.TrimSpace(v), `"'`)
		switch strings.TrimSpace(k) {
		case "AWS_ACCESS_KEY_ID":
			access = v
		case "AWS_SECRET_ACCESS_KEY":
			secret = v
		case "AWS_SESSION_TOKEN":
			token = v
		}
	}
	if err := sc.Err(); err != nil {
		return "", "", "", err
	}
	if access == "" || secret == "" {
		return "", "", "", fmt.Errorf("want both AWS_ACCESS_KEY_ID=... and AWS_SECRET_ACCESS_KEY=... lines")
	}
	return access, secret, token, nil
}
