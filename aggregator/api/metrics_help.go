package api

import "github.com/loupe-dev/loupe/traces/promtext"

// MetricsHelp is the HELP text of every metric family the aggregator
// serves, whichever package registers it (process metrics come from
// promtext.RuntimeHelp). A new metric gets its line here, in the words of
// its README entry; TestMetricsHelp fails for a family that has none.
var MetricsHelp = promtext.Help{
	"loupe_aggregator_analyses_total":                "Captures analyzed, by result (complete, partial, backfill).",
	"loupe_aggregator_analysis_errors_total":         "Analyses that failed (retried at the next notification or sweep).",
	"loupe_aggregator_analysis_duration_seconds":     "Time to analyze one capture with every analyzer.",
	"loupe_aggregator_findings_written_total":        "Findings written to the store.",
	"loupe_aggregator_lease_busy_total":              "Captures skipped because another replica holds their lease.",
	"loupe_aggregator_notifications_total":           "Capture notifications, by source (webhook, listing).",
	"loupe_aggregator_listed_objects_total":          "Objects seen by the periodic listing.",
	"loupe_aggregator_listing_errors_total":          "Periodic listings of the store that failed.",
	"loupe_aggregator_process_errors_total":          "Notified captures that could not be processed.",
	"loupe_aggregator_queued_captures":               "Captures waiting for analysis on this replica.",
	"loupe_aggregator_incidents_total":               "Incidents made by triage.",
	"loupe_aggregator_goodput_computed_total":        "Goodput records of job runs computed and stored.",
	"loupe_aggregator_goodput_errors_total":          "Goodput computations that failed (the record is computed again when asked for).",
	"loupe_aggregator_triage_errors_total":           "Triage runs that failed.",
	"loupe_aggregator_http_requests_total":           "HTTP requests served, by route and status code.",
	"loupe_aggregator_http_request_duration_seconds": "Time to serve an HTTP request, by route.",
	"loupe_aggregator_view_duration_seconds":         "Time to compute a web UI view, by view.",
	"loupe_aggregator_view_cache_bytes":              "Bytes held by the views' cache of decoded tables.",
	"loupe_alerts_sent_total":                        "Alerts delivered, by target.",
	"loupe_alerts_deduplicated_total":                "Alerts not sent because the incident had not changed, by target.",
	"loupe_alerts_rate_limited_total":                "Alerts held back by alert_min_interval, by target.",
	"loupe_alerts_retries_total":                     "Alert deliveries retried, by target.",
	"loupe_alerts_dead_letters_total":                "Alerts given up on and written as dead letters, by target.",
}
