package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/loupe-dev/loupe/agent/capture"
)

// Client talks to a local agent's API.
type Client struct {
	// Addr is the agent's API address, HOST:PORT or an http(s) URL.
	Addr  string
	Token string
	HTTP  *http.Client
}

func (c *Client) url(path string) string {
	base := c.Addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimSuffix(base, "/") + path
}

// do sends body (when not nil) and decodes a 2xx reply into out (when not
// nil); other replies become an *Error.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("loupe-agent API at %s: %w (is the agent running? see --api-addr)", c.Addr, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("loupe-agent API %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		e := &Error{Code: resp.StatusCode}
		if json.Unmarshal(data, e) != nil || e.Message == "" {
			e.Message = strings.TrimSpace(string(data))
		}
		return e
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("loupe-agent API %s %s: decoding reply: %w", method, path, err)
	}
	return nil
}

// Step posts an iteration marker.
func (c *Client) Step(ctx context.Context, req StepRequest) error {
	return c.do(ctx, http.MethodPost, "/v1/steps", req, nil)
}

// Steps returns step statistics, of one job or all when job is empty.
func (c *Client) Steps(ctx context.Context, job string) (StepsReply, error) {
	var out StepsReply
	err := c.do(ctx, http.MethodGet, "/v1/steps?job="+url.QueryEscape(job), nil, &out)
	return out, err
}

// Capture asks for a capture.
func (c *Client) Capture(ctx context.Context, req CaptureRequest) (CaptureReply, error) {
	var out CaptureReply
	err := c.do(ctx, http.MethodPost, "/v1/captures", req, &out)
	return out, err
}

// CaptureStatus returns the state of one capture.
func (c *Client) CaptureStatus(ctx context.Context, id string) (capture.Status, error) {
	var out capture.Status
	err := c.do(ctx, http.MethodGet, "/v1/captures/"+url.PathEscape(id), nil, &out)
	return out, err
}

// PauseProfiling pauses (true) or resumes (false) DCGM profiling.
func (c *Client) PauseProfiling(ctx context.Context, pause bool) error {
	path := "/v1/dcgm/resume"
	if pause {
		path = "/v1/dcgm/pause"
	}
	return c.do(ctx, http.MethodPost, path, nil, nil)
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (StatusReply, error) {
	var out StatusReply
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}
