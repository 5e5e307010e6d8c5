package alerts

import (
	"fmt"
	"strings"

	"github.com/loupe-dev/loupe/traces"
)

// slackText is a Block Kit text object.
type slackText struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// slackBlock is one Block Kit block; unused fields are omitted.
type slackBlock struct {
	Type     string         `json:"type"`
	Text     *slackText     `json:"text,omitempty"`
	Fields   []slackText    `json:"fields,omitempty"`
	Elements []slackElement `json:"elements,omitempty"`
}

type slackElement struct {
	Type string     `json:"type"`
	Text *slackText `json:"text,omitempty"`
	URL  string     `json:"url,omitempty"`
}

type slackPayload struct {
	Text   string       `json:"text"` // notification fallback
	Blocks []slackBlock `json:"blocks"`
}

// slackMessage renders an incident for a Slack-compatible incoming webhook.
func slackMessage(inc *traces.Incident, dashboard, perfetto string) slackPayload {
	sev := strings.ToUpper(inc.Severity)
	if !inc.Resolved.IsZero() {
		sev = "RESOLVED " + sev
	}
	owners := "unowned"
	if len(inc.Owners) > 0 {
		owners = strings.Join(inc.Owners, ", ")
	}
	job := inc.Scope.Cluster + "/" + inc.Scope.Job + "/" + inc.Scope.Run
	impact := fmt.Sprintf("%.2f GPU-hours", inc.ImpactGPUHours)
	sim := ""
	if inc.Simulated {
		sim = " (simulated data)"
	}
	body := inc.Summary
	if inc.SuggestedFix != "" {
		body += "\n*Suggested fix:* " + inc.SuggestedFix
	}
	if inc.DocURL != "" {
		body += " (<" + inc.DocURL + "|docs>)"
	}
	if inc.Generated != nil {
		body += "\n_" + inc.Generated.Note + " (" + inc.Generated.Model + "):_ " + inc.Generated.Text
	}
	return slackPayload{
		Text: fmt.Sprintf("[%s] %s: job %s, %s%s", sev, inc.Title, job, impact, sim),
		Blocks: []slackBlock{
			{Type: "header", Text: &slackText{Type: "plain_text", Text: truncate(sev+": "+inc.Title+sim, 150)}},
			{Type: "section", Fields: []slackText{
				{Type: "mrkdwn", Text: "*Severity*\n" + inc.Severity},
				{Type: "mrkdwn", Text: "*Impact*\n" + impact},
				{Type: "mrkdwn", Text: "*Owners*\n" + owners},
				{Type: "mrkdwn", Text: "*Job*\n" + job},
			}},
			{Type: "section", Text: &slackText{Type: "mrkdwn", Text: truncate(body, 3000)}},
			{Type: "actions", Elements: []slackElement{
				{Type: "button", Text: &slackText{Type: "plain_text", Text: "Dashboard"}, URL: dashboard},
				{Type: "button", Text: &slackText{Type: "plain_text", Text: "Perfetto trace"}, URL: perfetto},
			}},
		},
	}
}

// truncate shortens s to n runes, as Slack limits block text.
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
