package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/loupe-dev/loupe/aggregator/alerts"
	"github.com/loupe-dev/loupe/traces"
)

// receiver is the demo's alert webhook endpoint: it checks each request's
// HMAC signature with alerts.Verify, as a real receiver must, and prints
// the incident.
type receiver struct {
	secret []byte
	print  func(format string, args ...any)

	mu               sync.Mutex
	verified, forged int
}

// alertBody is the part of the generic webhook payload the demo prints.
type alertBody struct {
	Incident traces.Incident   `json:"incident"`
	Links    map[string]string `json:"links"`
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST alerts here", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := alerts.Verify(rc.secret, r.Header.Get("X-Loupe-Timestamp"), r.Header.Get("X-Loupe-Signature"), body, time.Now(), 5*time.Minute); err != nil {
		rc.mu.Lock()
		rc.forged++
		rc.mu.Unlock()
		rc.print("ALERT REJECTED: %v", err)
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var a alertBody
	if err := json.Unmarshal(body, &a); err != nil {
		http.Error(w, "not a Loupe alert: "+err.Error(), http.StatusBadRequest)
		return
	}
	rc.mu.Lock()
	rc.verified++
	rc.mu.Unlock()
	inc := a.Incident
	text := inc.Title
	if inc.Summary != "" && inc.Summary != inc.Title {
		text += ": " + inc.Summary
	}
	rc.print("ALERT (signature verified) [%s] %s; impact %.1f GPU-seconds; %s", inc.Severity, text, inc.ImpactGPUHours*3600, a.Links["dashboard"])
	w.WriteHeader(http.StatusNoContent)
}

// counts returns how many alerts were verified and rejected.
func (rc *receiver) counts() (verified, forged int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.verified, rc.forged
}

func (rc *receiver) String() string {
	v, f := rc.counts()
	return fmt.Sprintf("%d verified, %d rejected", v, f)
}
