package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		url     string
		want    Location
		wantErr string
	}{
		{url: "file:///var/lib/loupe/store", want: Location{Dir: "/var/lib/loupe/store"}},
		{url: "file:///tmp/x/../y/", want: Location{Dir: "/tmp/y"}},
		{url: "file://localhost/srv", want: Location{Dir: "/srv"}},
		{url: "s3://traces/loupe/prod?endpoint=minio:9000&secure=false&region=eu-1&path_style=true",
			want: Location{S3: &S3Config{Bucket: "traces", Prefix: "loupe/prod", Endpoint: "minio:9000", Region: "eu-1", PathStyle: true}}},
		{url: "s3://traces", want: Location{S3: &S3Config{Bucket: "traces", Endpoint: "s3.amazonaws.com", Secure: true}}},
		{url: "s3://traces/?credentials_file=/etc/loupe/s3.env&profile=p&part_size_mib=64",
			want: Location{S3: &S3Config{Bucket: "traces", Endpoint: "s3.amazonaws.com", Secure: true, CredentialsFile: "/etc/loupe/s3.env", Profile: "p", PartSize: 64 << 20}}},
		{url: "file:relative/dir", wantErr: "absolute path"},
		{url: "file://host/dir", wantErr: "absolute path"},
		{url: "file:///d?x=1", wantErr: "no query"},
		{url: "/var/lib/loupe", wantErr: "unknown scheme"},
		{url: "gs://bucket", wantErr: "unknown scheme"},
		{url: "s3://Bad_Bucket", wantErr: "lowercase"},
		{url: "s3://ab", wantErr: "3 to 63"},
		{url: "s3://traces/a/../b", wantErr: "prefix"},
		{url: "s3://traces?endpont=x", wantErr: `unknown parameter "endpont"`},
		{url: "s3://traces?secure=maybe", wantErr: "not true or false"},
		{url: "s3://traces?secure=1&secure=0", wantErr: "2 times"},
		{url: "s3://traces?endpoint=http://minio:9000", wantErr: "endpoint"},
		{url: "s3://traces?part_size_mib=1", wantErr: "5 to 5120"},
		{url: "s3://user:pw@traces", wantErr: "no user info"},
		{url: "s3://tr%zzaces", wantErr: "use file:///DIR"},
	} {
		got, err := ParseURL(tc.url)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseURL(%q) error = %v, want one containing %q", tc.url, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if got.Dir != tc.want.Dir || (got.S3 == nil) != (tc.want.S3 == nil) || got.S3 != nil && *got.S3 != *tc.want.S3 {
			t.Errorf("ParseURL(%q) = %+v %+v, want %+v %+v", tc.url, got, got.S3, tc.want, tc.want.S3)
		}
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"file:///var/lib/loupe/store", "s3://b-1/p?endpoint=h:1&secure=false&region=r&path_style=true",
		"s3://bucket/a/../b", "s3://bkt?credentials_file=/x&part_size_mib=5", "file://", "s3://", "%", "s3://b..b/\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		loc, err := ParseURL(raw)
		if err != nil {
			return
		}
		switch {
		case loc.S3 != nil && loc.Dir == "":
			if validBucket(loc.S3.Bucket) != nil || loc.S3.Endpoint == "" {
				t.Fatalf("ParseURL(%q) accepted %+v", raw, loc.S3)
			}
			if loc.S3.Prefix != "" && ValidateKey(loc.S3.Prefix) != nil {
				t.Fatalf("ParseURL(%q) accepted prefix %q", raw, loc.S3.Prefix)
			}
		case loc.S3 == nil && filepath.IsAbs(loc.Dir) && filepath.Clean(loc.Dir) == loc.Dir:
		default:
			t.Fatalf("ParseURL(%q) = %+v", raw, loc)
		}
	})
}

func TestParseCredentials(t *testing.T) {
	for _, tc := range []struct{ in, access, secret, token, wantErr string }{
		{in: "AWS_ACCESS_KEY_ID=ak\nAWS_SECRET_ACCESS_KEY=sk\n", access: "ak", secret: "sk"},
		{in: "# comment\n\nexport AWS_ACCESS_KEY_ID=\"ak\"\n AWS_SECRET_ACCESS_KEY = 'sk=x' \nAWS_SESSION_TOKEN=tok\nOTHER=1", access: "ak", secret: "sk=x", token: "tok"},
		{in: "AWS_ACCESS_KEY_ID=ak\n", wantErr: "want both"},
		{in: "AWS_ACCESS_KEY_ID ak\n", wantErr: "line 1"},
	} {
		a, s, tok, err := parseCredentials([]byte(tc.in))
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseCredentials(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || a != tc.access || s != tc.secret || tok != tc.token {
			t.Errorf("parseCredentials(%q) = %q %q %q %v", tc.in, a, s, tok, err)
		}
	}
}

func FuzzParseCredentials(f *testing.F) {
	f.Add("AWS_ACCESS_KEY_ID=ak\nAWS_SECRET_ACCESS_KEY=sk\n")
	f.Add("export A=\"\nB")
	f.Fuzz(func(t *testing.T, in string) {
		a, s, _, err := parseCredentials([]byte(in))
		if err == nil && (a == "" || s == "") {
			t.Fatalf("parseCredentials(%q) accepted empty keys", in)
		}
	})
}

func TestOpenCredentials(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("HOME", dir)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	const base = "s3://traces?endpoint=127.0.0.1:9&secure=false"
	ctx := context.Background()

	if _, err := Open(ctx, base); err == nil || !strings.Contains(err.Error(), "no S3 credentials") {
		t.Errorf("Open without credentials: %v, want a 'no S3 credentials' error", err)
	}
	if _, err := Open(ctx, base+"&credentials_file="+filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "credentials_file") {
		t.Errorf("Open with a missing credentials file: %v", err)
	}
	cred := filepath.Join(dir, "s3.env")
	os.WriteFile(cred, []byte("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n"), 0o600)
	if _, err := Open(ctx, base+"&credentials_file="+cred); err != nil {
		t.Errorf("Open with a credentials file: %v", err)
	}
	os.MkdirAll(filepath.Join(dir, ".aws"), 0o700)
	os.WriteFile(filepath.Join(dir, ".aws", "credentials"), []byte("[default]\naws_access_key_id = a\naws_secret_access_key = b\n"), 0o600)
	if _, err := Open(ctx, base); err != nil {
		t.Errorf("Open with ~/.aws/credentials: %v", err)
	}
	if _, err := Open(ctx, base+"&profile=nope"); err == nil || !strings.Contains(err.Error(), "profile") {
		t.Errorf("Open with a missing profile: %v", err)
	}
	t.Setenv("AWS_ACCESS_KEY_ID", "a")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "b")
	if _, err := Open(ctx, base+"&profile=nope"); err != nil {
		t.Errorf("Open with environment credentials: %v", err)
	}
}

func TestDirRejectsReservedAndCleansTemps(t *testing.T) {
	root := t.TempDir()
	tmp := filepath.Join(root, ".loupe-tmp")
	os.MkdirAll(tmp, 0o755)
	old, young := filepath.Join(tmp, "put-old"), filepath.Join(tmp, "put-young")
	os.WriteFile(old, []byte("x"), 0o644)
	os.WriteFile(young, []byte("x"), 0o644)
	os.Chtimes(old, time.Now().Add(-48*time.Hour), time.Now().Add(-48*time.Hour))
	st, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("a day-old temp file left by a crash was not removed: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("a recent temp file (maybe another writer's) was removed: %v", err)
	}
	if _, err := st.Put(context.Background(), ".loupe-tmp/lock", strings.NewReader("x"), 1, PutOptions{}); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("Put into the reserved folder: %v", err)
	}
	objs, _, err := st.List(context.Background(), "", "", 10)
	if err != nil || len(objs) != 0 {
		t.Errorf("List of an empty store shows %v, %v", objs, err)
	}
}
