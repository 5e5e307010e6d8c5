package traces

import (
	"errors"
	"testing"
	"time"
)

func TestContinuousCaptureID(t *testing.T) {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	id := ContinuousCaptureID(start.In(time.FixedZone("x", 3600)), time.Minute)
	if id != "continuous-20260301T120000Z-60s" {
		t.Fatalf("id %q", id)
	}
	if err := ValidateComponent(id); err != nil {
		t.Fatal(err)
	}
	got, d, err := ParseContinuousCaptureID(id)
	if err != nil || !got.Equal(start) || d != time.Minute || !IsContinuous(id) {
		t.Errorf("ParseContinuousCaptureID(%q) = %v, %v, %v", id, got, d, err)
	}
	for _, bad := range []string{"iter40-n40", "continuous-", "continuous-20260301T120000Z", "continuous-20260301T120000Z-0s", "continuous-2026-60s", "continuous-20260301T120000Z-xs"} {
		if _, _, err := ParseContinuousCaptureID(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseContinuousCaptureID(%q): %v, want ErrBadKey", bad, err)
		}
	}
	k := Key{Cluster: "c", Job: "j", Run: "r"}
	if seek := k.ContinuousSeek(start); seek >= k.JobPrefix()+id || seek < k.JobPrefix()+ContinuousCaptureID(start.Add(-time.Second), time.Minute) {
		t.Errorf("seek key %q does not sort just before %q", seek, id)
	}
}

func FuzzParseContinuousCaptureID(f *testing.F) {
	f.Add("continuous-20260301T120000Z-60s")
	f.Fuzz(func(t *testing.T, id string) {
		start, d, err := ParseContinuousCaptureID(id)
		if err == nil && ContinuousCaptureID(start, d) != id && d <= 0 {
			t.Errorf("%q parsed to %v, %v", id, start, d)
		}
	})
}
