package aggregator_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7/pkg/notification"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/upload"
	"github.com/loupe-dev/loupe/aggregator"
	"github.com/loupe-dev/loupe/aggregator/api"
	"github.com/loupe-dev/loupe/aggregator/internal/aggtest"
	"github.com/loupe-dev/loupe/analyzers"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// TestEndToEndMinIO: agents' uploaders send bundles to a real MinIO, MinIO
// posts S3 event notifications to the aggregator's webhook, and the
// findings appear in the API. Periodic listing is off, so only the
// notifications can have brought the capture in.
func TestEndToEndMinIO(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const token = "e2e-token"
	// MinIO reads its webhook targets from the environment at start.
	t.Setenv("MINIO_NOTIFY_WEBHOOK_ENABLE_LOUPE", "on")
	t.Setenv("MINIO_NOTIFY_WEBHOOK_ENDPOINT_LOUPE", "http://"+ln.Addr().String()+"/api/v1/s3-events")
	t.Setenv("MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_LOUPE", token)
	srv := miniotest.Start(t)
	cfgN := notification.NewConfig(notification.NewArn("minio", "sqs", "", "LOUPE", "webhook"))
	cfgN.AddEvents(notification.ObjectCreatedAll)
	cfgN.AddFilterSuffix("manifest.json")
	var nc notification.Configuration
	nc.AddQueue(cfgN)
	// MinIO registers its notification targets in the background after it
	// reports ready; until then the ARN is unknown.
	var nerr error
	waitFor(t, "MinIO to know the webhook target", func() bool {
		nerr = srv.Client().SetBucketNotification(ctx, srv.Bucket, nc)
		return nerr == nil || !strings.Contains(nerr.Error(), "ARN does not exist")
	})
	if nerr != nil {
		t.Fatalf("configure the bucket's webhook notification: %v", nerr)
	}

	count := aggtest.NewCounter("count", "1")
	list := append([]*analyzers.Analyzer{count.Analyzer}, analyzers.All...)
	cfg := aggregator.DefaultConfig()
	cfg.Store = srv.URL("")
	cfg.WebhookToken = token
	cfg.SweepInterval = -1
	cfg.LeaseTTL = 10 * time.Second
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc, err := aggregator.New(ctx, cfg, list, log)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { svc.Serve(ctx, ln) })
	defer wg.Wait()
	defer cancel()
	base := "http://" + ln.Addr().String()
	waitFor(t, "the start-up listing", svc.Watcher.Ready)

	// Two agents, one host each, ranks 0-1 and 2-3 of one job.
	for i, host := range []string{"gpu-node-1", "gpu-node-2"} {
		sp, err := spool.Open(t.TempDir(), spool.Options{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		defer sp.Close()
		m := aggtest.Manifest("llm-train", "cap-e2e", host, 4, 2*i, 2*i+1)
		dir, err := sp.Begin(m.CaptureID, host)
		if err != nil {
			t.Fatal(err)
		}
		aggtest.WriteSteps(t, dir, m)
		if err := sp.Commit(dir); err != nil {
			t.Fatal(err)
		}
		up := upload.New(sp, srv.Store(t), upload.Options{Logger: log, Interval: time.Hour})
		if err := up.Drain(ctx); err != nil {
			t.Fatalf("upload from %s: %v", host, err)
		}
	}

	var got api.FindingsResponse
	waitFor(t, "findings in the API", func() bool {
		resp, err := http.Get(base + "/api/v1/findings?job=llm-train&analyzer=count")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&got) == nil && got.Total == 2
	})
	for _, f := range got.Findings {
		if f.Partial || f.Scope.Capture != "cap-e2e" || len(f.Lineage.Inputs) != 2 {
			t.Errorf("finding %+v", f)
		}
	}
	var detail api.CaptureResponse
	resp, err := http.Get(base + "/api/v1/captures/c1/llm-train/r1/cap-e2e")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&detail)
	resp.Body.Close()
	if !detail.Complete || len(detail.Manifests) != 2 || detail.Record == nil || len(detail.Record.Errors) != 0 {
		t.Fatalf("capture detail: complete %v, %d manifests, record %+v", detail.Complete, len(detail.Manifests), detail.Record)
	}
	if count.Runs("c1/llm-train/r1/cap-e2e") != 1 {
		t.Fatalf("analyzed %d times", count.Runs("c1/llm-train/r1/cap-e2e"))
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `loupe_aggregator_notifications_total{source="webhook"} 2`) {
		t.Errorf("metrics do not show the two webhook notifications:\n%s", grep(string(body), "loupe_aggregator_notifications"))
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 60s waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
