package watcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
)

// MaxEventBody bounds one webhook request body.
const MaxEventBody = 1 << 20

// maxRecords bounds the records of one notification.
const maxRecords = 1000

// Event is one object notification from the store.
type Event struct {
	// Name is the S3 event name, e.g. "s3:ObjectCreated:Put".
	Name   string
	Bucket string
	// Key is the object key in the bucket, decoded.
	Key string
}

// ErrEvent reports a notification body that cannot be used.
var ErrEvent = errors.New("invalid S3 event notification")

// notification is the union of the two bodies stores send: MinIO's webhook
// target posts {"EventName", "Key": "bucket/key", "Records": [...]}, and
// AWS-style senders (versitygw, S3 via a relay) post {"Records": [...]}.
// Record object keys are URL-encoded, as in AWS's event structure.
type notification struct {
	// Event is "s3:TestEvent" in the message AWS sends when notifications
	// are configured.
	Event     string   `json:"Event"`
	EventName string   `json:"EventName"`
	Key       string   `json:"Key"`
	Records   []record `json:"Records"`
}

type record struct {
	EventName string `json:"eventName"`
	S3        struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key string `json:"key"`
		} `json:"object"`
	} `json:"s3"`
}

// DecodeEvents reads one webhook notification body. It accepts MinIO's
// webhook format and AWS's event structure, at most MaxEventBody bytes.
// AWS's test message gives no events and no error.
func DecodeEvents(r io.Reader) ([]Event, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxEventBody+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read body: %v", ErrEvent, err)
	}
	if len(data) > MaxEventBody {
		return nil, fmt.Errorf("%w: body larger than %d bytes", ErrEvent, MaxEventBody)
	}
	var n notification
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, fmt.Errorf("%w: not JSON of the S3 event format: %v", ErrEvent, err)
	}
	if n.Event == "s3:TestEvent" && len(n.Records) == 0 {
		return nil, nil
	}
	if len(n.Records) > maxRecords {
		return nil, fmt.Errorf("%w: %d records, at most %d", ErrEvent, len(n.Records), maxRecords)
	}
	var evs []Event
	for i, rec := range n.Records {
		key, err := url.QueryUnescape(rec.S3.Object.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: record %d: object key %q is not URL-encoded: %v", ErrEvent, i, rec.S3.Object.Key, err)
		}
		if key == "" || rec.S3.Bucket.Name == "" {
			return nil, fmt.Errorf("%w: record %d has no s3.bucket.name or s3.object.key", ErrEvent, i)
		}
		evs = append(evs, Event{Name: rec.EventName, Bucket: rec.S3.Bucket.Name, Key: key})
	}
	if len(n.Records) == 0 {
		// MinIO's top-level Key is "bucket/key", already decoded.
		bucket, key, ok := strings.Cut(n.Key, "/")
		if !ok || bucket == "" || key == "" {
			return nil, fmt.Errorf("%w: no Records and no Key of the form bucket/key", ErrEvent)
		}
		evs = append(evs, Event{Name: n.EventName, Bucket: bucket, Key: key})
	}
	return evs, nil
}

// Created reports whether the event says an object was written.
func (e Event) Created() bool { return strings.Contains(e.Name, "ObjectCreated") }
