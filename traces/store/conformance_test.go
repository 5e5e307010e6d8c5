package store_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/loupe-dev/loupe/traces/store"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
	"github.com/loupe-dev/loupe/traces/store/versitygwtest"
)

// behaviours is the one table of Store behaviours every implementation must
// show; TestConformance runs it against each.
var behaviours = []struct {
	name string
	run  func(t *testing.T, st store.Store)
}{
	{"PutGetStat", func(t *testing.T, st store.Store) {
		body := []byte("hello, loupe")
		info := put(t, st, "a/b/c.json", body, store.PutOptions{ContentType: "application/json"})
		if info.Size != int64(len(body)) || info.ETag != md5hex(body) {
			t.Errorf("Put info = %+v, want size %d etag %s", info, len(body), md5hex(body))
		}
		got, gi := get(t, st, "a/b/c.json")
		if !bytes.Equal(got, body) || gi.ETag != info.ETag || gi.Size != info.Size {
			t.Errorf("Get = %q %+v, want %q %+v", got, gi, body, info)
		}
		si, err := st.Stat(ctx, "a/b/c.json")
		if err != nil || si.ETag != info.ETag || si.Size != info.Size || si.Key != "a/b/c.json" || si.LastModified.IsZero() {
			t.Errorf("Stat = %+v, %v; want %+v", si, err, info)
		}
	}},
	{"Missing", func(t *testing.T, st store.Store) {
		if _, err := st.Stat(ctx, "no/such"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Stat missing: %v, want ErrNotFound", err)
		}
		if _, _, err := st.Get(ctx, "no/such"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Get missing: %v, want ErrNotFound", err)
		}
		put(t, st, "dir/obj", []byte("x"), store.PutOptions{})
		if _, err := st.Stat(ctx, "dir"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Stat of a folder: %v, want ErrNotFound", err)
		}
	}},
	{"Overwrite", func(t *testing.T, st store.Store) {
		put(t, st, "k", []byte("one"), store.PutOptions{})
		put(t, st, "k", []byte("two!"), store.PutOptions{})
		if got, _ := get(t, st, "k"); string(got) != "two!" {
			t.Errorf("after overwrite got %q", got)
		}
	}},
	{"UnknownSize", func(t *testing.T, st store.Store) {
		body := bytes.Repeat([]byte("z"), 3<<20)
		info, err := st.Put(ctx, "big/unknown", io.MultiReader(bytes.NewReader(body)), -1, store.PutOptions{})
		if err != nil || info.Size != int64(len(body)) {
			t.Fatalf("Put size -1: %+v, %v", info, err)
		}
		if got, _ := get(t, st, "big/unknown"); !bytes.Equal(got, body) {
			t.Errorf("round trip of %d bytes differs", len(body))
		}
	}},
	{"Multipart", func(t *testing.T, st store.Store) {
		// Three parts of the 5 MiB part size the S3 store is opened with.
		body := randBytes(11 << 20)
		if _, err := st.Put(ctx, "big/multi", bytes.NewReader(body), int64(len(body)), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		got, info := get(t, st, "big/multi")
		if !bytes.Equal(got, body) || info.Size != int64(len(body)) {
			t.Errorf("multipart round trip differs (%d bytes back of %d)", len(got), len(body))
		}
	}},
	{"ShortBody", func(t *testing.T, st store.Store) {
		if _, err := st.Put(ctx, "short", strings.NewReader("abc"), 10, store.PutOptions{}); err == nil {
			t.Error("Put of 3 bytes declared as 10 succeeded")
		}
		if _, err := st.Stat(ctx, "short"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a failed Put left an object: %v", err)
		}
	}},
	{"IfNoneMatch", func(t *testing.T, st store.Store) {
		put(t, st, "m/manifest.json", []byte("first"), store.PutOptions{IfNoneMatch: true})
		_, err := st.Put(ctx, "m/manifest.json", strings.NewReader("second"), 6, store.PutOptions{IfNoneMatch: true})
		if !errors.Is(err, store.ErrPrecondition) {
			t.Errorf("second create: %v, want ErrPrecondition", err)
		}
		if got, _ := get(t, st, "m/manifest.json"); string(got) != "first" {
			t.Errorf("object changed by a failed create: %q", got)
		}
	}},
	{"IfNoneMatchRace", func(t *testing.T, st store.Store) {
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				body := fmt.Sprintf("writer %d", i)
				_, errs[i] = st.Put(ctx, "race/obj", strings.NewReader(body), int64(len(body)), store.PutOptions{IfNoneMatch: true})
			})
		}
		wg.Wait()
		won := 0
		for i, err := range errs {
			switch {
			case err == nil:
				won++
			case !errors.Is(err, store.ErrPrecondition):
				t.Errorf("writer %d: %v", i, err)
			}
		}
		if won != 1 {
			t.Errorf("%d writers created the object, want exactly 1", won)
		}
	}},
	{"IfMatch", func(t *testing.T, st store.Store) {
		v1 := put(t, st, "cas", []byte("v1"), store.PutOptions{})
		v2 := put(t, st, "cas", []byte("v2"), store.PutOptions{IfMatch: v1.ETag})
		if _, err := st.Put(ctx, "cas", strings.NewReader("v3"), 2, store.PutOptions{IfMatch: v1.ETag}); !errors.Is(err, store.ErrPrecondition) {
			t.Errorf("put with stale ETag: %v, want ErrPrecondition", err)
		}
		if got, _ := get(t, st, "cas"); string(got) != "v2" {
			t.Errorf("got %q, want v2", got)
		}
		put(t, st, "cas", []byte("v4"), store.PutOptions{IfMatch: `"` + v2.ETag + `"`})
		if _, err := st.Put(ctx, "cas-missing", strings.NewReader("x"), 1, store.PutOptions{IfMatch: v1.ETag}); !errors.Is(err, store.ErrPrecondition) {
			t.Errorf("IfMatch on a missing object: %v, want ErrPrecondition", err)
		}
	}},
	{"ConditionalMultipart", func(t *testing.T, st store.Store) {
		// Bodies over the 5 MiB part size, and of unknown size, which S3
		// clients send as multipart uploads: the condition must still hold.
		body := randBytes(6 << 20)
		v1, err := st.Put(ctx, "mc", bytes.NewReader(body), int64(len(body)), store.PutOptions{IfNoneMatch: true})
		if err != nil {
			t.Fatal(err)
		}
		stale := md5hex([]byte("stale"))
		for _, tc := range []struct {
			name    string
			unknown bool // size -1
			opts    store.PutOptions
		}{
			{"IfNoneMatch", false, store.PutOptions{IfNoneMatch: true}},
			{"IfNoneMatch unknown size", true, store.PutOptions{IfNoneMatch: true}},
			{"stale IfMatch", false, store.PutOptions{IfMatch: stale}},
			{"stale IfMatch unknown size", true, store.PutOptions{IfMatch: stale}},
		} {
			other := body[1:]
			size := int64(len(other))
			if tc.unknown {
				size = -1
			}
			if _, err := st.Put(ctx, "mc", bytes.NewReader(other), size, tc.opts); !errors.Is(err, store.ErrPrecondition) {
				t.Errorf("%s: %v, want ErrPrecondition", tc.name, err)
			}
		}
		if si, err := st.Stat(ctx, "mc"); err != nil || si.ETag != v1.ETag {
			t.Errorf("object changed by failed conditional puts: %+v, %v; want ETag %s", si, err, v1.ETag)
		}
		if _, err := st.Put(ctx, "mc", bytes.NewReader(body), -1, store.PutOptions{IfMatch: v1.ETag}); err != nil {
			t.Errorf("IfMatch with the current ETag: %v", err)
		}
	}},
	{"Delete", func(t *testing.T, st store.Store) {
		put(t, st, "d/x/1", []byte("1"), store.PutOptions{})
		put(t, st, "d/y", []byte("2"), store.PutOptions{})
		if err := st.Delete(ctx, "d/x/1"); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Stat(ctx, "d/x/1"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Stat after Delete: %v", err)
		}
		if err := st.Delete(ctx, "d/x/1"); err != nil {
			t.Errorf("deleting a missing object: %v", err)
		}
		if keys := listAll(t, st, "d/", 10); !equal(keys, []string{"d/y"}) {
			t.Errorf("after delete, list = %q", keys)
		}
	}},
	{"ListOrderAndPages", func(t *testing.T, st store.Store) {
		// "a-b" sorts before "a/..." ('-' < '/') even though a file system
		// lists the folder "a" first.
		keys := []string{"a-b", "a/b", "a/c/d", "a/c0", "a.z", "b", "ab/c", "v1/x/y/z"}
		for _, k := range keys {
			put(t, st, k, []byte(k), store.PutOptions{})
		}
		want := []string{"a-b", "a.z", "a/b", "a/c/d", "a/c0", "ab/c", "b", "v1/x/y/z"}
		for _, limit := range []int{1, 2, 3, 100} {
			if got := listAll(t, st, "", limit); !equal(got, want) {
				t.Errorf("limit %d: list = %q, want %q", limit, got, want)
			}
		}
		for prefix, w := range map[string][]string{
			"a":   {"a-b", "a.z", "a/b", "a/c/d", "a/c0", "ab/c"},
			"a/":  {"a/b", "a/c/d", "a/c0"},
			"a/c": {"a/c/d", "a/c0"},
			"v1/": {"v1/x/y/z"},
			"zz":  nil,
		} {
			if got := listAll(t, st, prefix, 2); !equal(got, w) {
				t.Errorf("prefix %q: list = %q, want %q", prefix, got, w)
			}
		}
		objs, next, err := st.List(ctx, "", "a/b", 2)
		if err != nil || len(objs) != 2 || objs[0].Key != "a/c/d" || objs[1].Key != "a/c0" || next != "a/c0" {
			t.Errorf("List after cursor a/b = %v next %q err %v", keysOf(objs), next, err)
		}
		if objs[0].Size != int64(len("a/c/d")) || objs[0].ETag != md5hex([]byte("a/c/d")) {
			t.Errorf("listed info %+v lacks size or ETag", objs[0])
		}
		objs, next, err = st.List(ctx, "", "ab/c", 10)
		if err != nil || !equal(keysOf(objs), []string{"b", "v1/x/y/z"}) || next != "" {
			t.Errorf("last page = %v next %q err %v", keysOf(objs), next, err)
		}
	}},
	{"InvalidKeys", func(t *testing.T, st store.Store) {
		for _, k := range []string{"", "/a", "a/", "a//b", "a/../b", "..", ".", "a\\b", "a\x00b", "a\nb", strings.Repeat("k", 1025)} {
			if _, err := st.Put(ctx, k, strings.NewReader("x"), 1, store.PutOptions{}); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Put(%q): %v, want ErrInvalidKey", k, err)
			}
			if _, err := st.Stat(ctx, k); !errors.Is(err, store.ErrInvalidKey) {
				t.Errorf("Stat(%q): %v, want ErrInvalidKey", k, err)
			}
		}
		if _, _, err := st.List(ctx, "../", "", 1); !errors.Is(err, store.ErrInvalidKey) {
			t.Errorf("List(../): %v, want ErrInvalidKey", err)
		}
	}},
	{"Canceled", func(t *testing.T, st store.Store) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := st.Put(cctx, "cancelled", strings.NewReader("x"), 1, store.PutOptions{}); err == nil {
			t.Error("Put with a cancelled context succeeded")
		}
		if _, err := st.Stat(ctx, "cancelled"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("a cancelled Put left an object: %v", err)
		}
	}},
}

// server is an S3 server a test harness started (miniotest, versitygwtest).
type server interface{ URL(prefix string) string }

func TestConformance(t *testing.T) {
	impls := []struct {
		name string
		// open prepares the implementation and returns how to open a
		// fresh, empty store for one behaviour.
		open func(t *testing.T) func(t *testing.T) store.Store
	}{
		{"dir", func(*testing.T) func(*testing.T) store.Store {
			return func(t *testing.T) store.Store {
				st, err := store.Open(ctx, "file://"+t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
		}},
		{"s3", s3Stores(func(t testing.TB) server { return miniotest.Start(t) })},
		{"versitygw", s3Stores(func(t testing.TB) server { return versitygwtest.Start(t) })},
	}
	for _, impl := range impls {
		t.Run(impl.name, func(t *testing.T) {
			open := impl.open(t)
			for _, b := range behaviours {
				t.Run(b.name, func(t *testing.T) { b.run(t, open(t)) })
			}
		})
	}
}

// s3Stores starts one server and gives each behaviour its own prefix on it,
// with the smallest part size S3 allows so the multipart case stays small.
func s3Stores(start func(t testing.TB) server) func(t *testing.T) func(t *testing.T) store.Store {
	return func(t *testing.T) func(t *testing.T) store.Store {
		srv := start(t)
		return func(t *testing.T) store.Store {
			st, err := store.Open(ctx, srv.URL("conf/"+strings.ReplaceAll(t.Name(), "/", "-"))+"&part_size_mib=5")
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
	}
}

var ctx = context.Background()

func put(t *testing.T, st store.Store, key string, body []byte, opts store.PutOptions) store.ObjectInfo {
	t.Helper()
	info, err := st.Put(ctx, key, bytes.NewReader(body), int64(len(body)), opts)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return info
}

func get(t *testing.T, st store.Store, key string) ([]byte, store.ObjectInfo) {
	t.Helper()
	rc, info, err := st.Get(ctx, key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading %q: %v", key, err)
	}
	return b, info
}

// listAll pages through a listing limit objects at a time.
func listAll(t *testing.T, st store.Store, prefix string, limit int) []string {
	t.Helper()
	var keys []string
	cursor := ""
	for range 1000 {
		objs, next, err := st.List(ctx, prefix, cursor, limit)
		if err != nil {
			t.Fatalf("List(%q, %q, %d): %v", prefix, cursor, limit, err)
		}
		if len(objs) > limit {
			t.Fatalf("List returned %d objects for limit %d", len(objs), limit)
		}
		keys = append(keys, keysOf(objs)...)
		if next == "" {
			return keys
		}
		cursor = next
	}
	t.Fatal("listing never ended")
	return nil
}

func keysOf(objs []store.ObjectInfo) []string {
	var ks []string
	for _, o := range objs {
		ks = append(ks, o.Key)
	}
	return ks
}

func equal(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n") && len(a) == len(b)
}

func md5hex(b []byte) string { h := md5.Sum(b); return hex.EncodeToString(h[:]) }

func randBytes(n int) []byte {
	r := rand.NewChaCha8([32]byte{1})
	b := make([]byte, n)
	r.Read(b)
	return b
}
