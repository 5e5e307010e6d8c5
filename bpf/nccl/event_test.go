package nccl

import "testing"

// FuzzParseEvent: records come from the kernel, but a mismatched object or
// a corrupted record must give an error, never a panic.
func FuzzParseEvent(f *testing.F) {
	f.Add(make([]byte, EventSize))
	f.Add(make([]byte, EventSize-1))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev Event
		err := ParseEvent(b, &ev)
		if (err == nil) != (len(b) >= EventSize) {
			t.Fatalf("%d bytes: err %v", len(b), err)
		}
		_ = ev.Op.String()
	})
}
