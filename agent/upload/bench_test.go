package upload_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/minio/minio-go/v7"

	"github.com/loupe-dev/loupe/agent/spool"
	"github.com/loupe-dev/loupe/agent/spool/spooltest"
	"github.com/loupe-dev/loupe/agent/upload"
	"github.com/loupe-dev/loupe/traces/store/miniotest"
)

// BenchmarkCapture100MB compares the agent's whole path for a 100 MB capture
// (bundle written into the spool with digests and fsyncs, committed, verified
// and uploaded part by part, manifest last, entry removed) with one plain
// minio-go PutObject of the same bytes to the same MinIO. ratio is plain
// time / spool+upload time: 1 means the spool costs nothing.
func BenchmarkCapture100MB(b *testing.B) {
	srv := miniotest.Start(b)
	client := srv.Client()
	sp, err := spool.Open(b.TempDir(), spool.Options{Metrics: metrics.NewSet()})
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	u := upload.New(sp, srv.Store(b), upload.Options{Metrics: metrics.NewSet(), Logger: quiet})

	// A capture's usual shape: a few large Parquet tables, a profile, a trace.
	parts := spooltest.Parts(7, 4, 25<<20)
	var all []byte
	for _, p := range parts {
		all = append(all, p...)
	}
	ctx := context.Background()
	var plain, agent time.Duration
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if _, err := client.PutObject(ctx, srv.Bucket, fmt.Sprintf("plain/%d", i), bytes.NewReader(all), int64(len(all)), minio.PutObjectOptions{}); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		spooltest.Write(b, sp, spooltest.Manifest(fmt.Sprintf("bench%d", i), "h"), parts)
		if err := u.Drain(ctx); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		plain += t1.Sub(t0)
		agent += t2.Sub(t1)
	}
	b.ReportMetric(plain.Seconds()/agent.Seconds(), "ratio")
	mb := float64(len(all)) / 1e6 * float64(b.N)
	b.ReportMetric(mb/plain.Seconds(), "plain-MB/s")
	b.ReportMetric(mb/agent.Seconds(), "spool+upload-MB/s")
}
