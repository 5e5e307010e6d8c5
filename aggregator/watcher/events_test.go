package watcher

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// minioBody is what MinIO's webhook target posts (shape of event.Log).
const minioBody = `{"EventName":"s3:ObjectCreated:Put","Key":"loupe/v1/c1/j1/r1/cap 1/node-a/manifest.json",
"Records":[{"eventVersion":"2.0","eventSource":"minio:s3","eventName":"s3:ObjectCreated:Put",
"s3":{"s3SchemaVersion":"1.0","configurationId":"Config","bucket":{"name":"loupe","arn":"arn:aws:s3:::loupe"},
"object":{"key":"v1%2Fc1%2Fj1%2Fr1%2Fcap+1%2Fnode-a%2Fmanifest.json","size":812,"eTag":"abc","sequencer":"1"}}}]}`

func TestDecodeEvents(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []Event
		err  string
	}{
		{name: "minio webhook", body: minioBody,
			want: []Event{{Name: "s3:ObjectCreated:Put", Bucket: "loupe", Key: "v1/c1/j1/r1/cap 1/node-a/manifest.json"}}},
		{name: "aws records", body: `{"Records":[{"eventName":"ObjectCreated:CompleteMultipartUpload","s3":{"bucket":{"name":"b"},"object":{"key":"p/v1/a%3Db"}}},
			{"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"b"},"object":{"key":"x"}}}]}`,
			want: []Event{{Name: "ObjectCreated:CompleteMultipartUpload", Bucket: "b", Key: "p/v1/a=b"}, {Name: "ObjectRemoved:Delete", Bucket: "b", Key: "x"}}},
		{name: "key only", body: `{"EventName":"s3:ObjectCreated:Put","Key":"b/v1/x"}`,
			want: []Event{{Name: "s3:ObjectCreated:Put", Bucket: "b", Key: "v1/x"}}},
		{name: "aws test event", body: `{"Service":"Amazon S3","Event":"s3:TestEvent","Time":"2026-11-25T12:00:00Z","Bucket":"b"}`},
		{name: "not json", body: `EventName=x`, err: "not JSON"},
		{name: "no key", body: `{"EventName":"s3:ObjectCreated:Put"}`, err: "no Records and no Key"},
		{name: "record without bucket", body: `{"Records":[{"s3":{"object":{"key":"x"}}}]}`, err: "no s3.bucket.name"},
		{name: "bad escape", body: `{"Records":[{"s3":{"bucket":{"name":"b"},"object":{"key":"%zz"}}}]}`, err: "not URL-encoded"},
		{name: "too large", body: `{"Key":"` + strings.Repeat("a", MaxEventBody) + `"}`, err: "larger than"},
		{name: "too many records", body: `{"Records":[` + strings.Repeat(`{},`, maxRecords) + `{}]}`, err: "records, at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeEvents(strings.NewReader(tt.body))
			if tt.err != "" {
				if !errors.Is(err, ErrEvent) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want ErrEvent containing %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("event %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add([]byte(minioBody))
	f.Add([]byte(`{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"v1%2Fa"}}}]}`))
	f.Add([]byte(`{"Key":"b/k"}`))
	f.Add([]byte(`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := DecodeEvents(bytes.NewReader(body))
		if err != nil {
			if !errors.Is(err, ErrEvent) {
				t.Fatalf("error does not match ErrEvent: %v", err)
			}
			return
		}
		if len(evs) > maxRecords {
			t.Fatalf("%d events without error", len(evs))
		}
		for _, e := range evs {
			if e.Bucket == "" || e.Key == "" {
				t.Fatalf("event without bucket or key: %+v", e)
			}
		}
	})
}

func BenchmarkDecodeEvents(b *testing.B) {
	body := []byte(minioBody)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEvents(bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
	}
}
