package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loupe-dev/loupe/aggregator/alerts"
)

// The receiver prints alerts whose signature checks out and refuses the
// rest, as a real receiver of Loupe's generic webhook must.
func TestReceiverVerifiesSignatures(t *testing.T) {
	secret := []byte("demo-secret")
	body := `{"version":"1","type":"incident","incident":{"severity":"critical","title":"Thermal throttling","summary":"GPU 5 runs hot","impact_gpu_hours":0.01},"links":{"dashboard":"http://agg/jobs/x"}}`
	now := strconv.FormatInt(time.Now().Unix(), 10)
	stale := strconv.FormatInt(time.Now().Add(-time.Hour).Unix(), 10)
	for _, tc := range []struct {
		name, method, ts, sig, body string
		code                        int
		printed                     string
	}{
		{"signed", http.MethodPost, now, alerts.Sign(secret, now, []byte(body)), body, http.StatusNoContent,
			"ALERT (signature verified) [critical] Thermal throttling: GPU 5 runs hot; impact 36.0 GPU-seconds; http://agg/jobs/x"},
		{"other secret", http.MethodPost, now, alerts.Sign([]byte("guess"), now, []byte(body)), body, http.StatusUnauthorized,
			"ALERT REJECTED: X-Loupe-Signature does not match the body"},
		{"body changed", http.MethodPost, now, alerts.Sign(secret, now, []byte(body)), strings.Replace(body, "critical", "info", 1), http.StatusUnauthorized,
			"ALERT REJECTED"},
		{"replayed", http.MethodPost, stale, alerts.Sign(secret, stale, []byte(body)), body, http.StatusUnauthorized,
			"ALERT REJECTED: X-Loupe-Timestamp"},
		{"unsigned", http.MethodPost, "", "", body, http.StatusUnauthorized, "ALERT REJECTED"},
		{"signed but not an alert", http.MethodPost, now, alerts.Sign(secret, now, []byte("[1]")), "[1]", http.StatusBadRequest, ""},
		{"GET", http.MethodGet, "", "", "", http.StatusMethodNotAllowed, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var printed []string
			rc := &receiver{secret: secret, print: func(f string, a ...any) { printed = append(printed, fmt.Sprintf(f, a...)) }}
			req := httptest.NewRequest(tc.method, "/alerts", strings.NewReader(tc.body))
			if tc.ts != "" {
				req.Header.Set("X-Loupe-Timestamp", tc.ts)
				req.Header.Set("X-Loupe-Signature", tc.sig)
			}
			w := httptest.NewRecorder()
			rc.ServeHTTP(w, req)
			if w.Code != tc.code {
				t.Errorf("HTTP %d, want %d (%s)", w.Code, tc.code, w.Body)
			}
			got := strings.Join(printed, "\n")
			if tc.printed == "" && got != "" || !strings.HasPrefix(got, tc.printed) {
				t.Errorf("printed %q, want %q", got, tc.printed)
			}
			v, f := rc.counts()
			if wantV := tc.code == http.StatusNoContent; (v == 1) != wantV || (f == 1) != (tc.code == http.StatusUnauthorized) {
				t.Errorf("counts %d verified, %d rejected", v, f)
			}
		})
	}
}
