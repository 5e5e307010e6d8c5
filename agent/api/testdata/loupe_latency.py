import json, os, time, urllib.request
class LoupeLatency:
    """Batches request latencies (seconds) and posts them to the local Loupe agent."""
    def __init__(self, job, url=os.environ.get("LOUPE_LATENCY_URL", "http://127.0.0.1:9401/v1/latency"), batch=500):
        self.job, self.url, self.batch, self.values = job, url, batch, []
    def observe(self, seconds):
        self.values.append({"time": time.time(), "seconds": seconds})
        if len(self.values) >= self.batch:
            self.flush()
    def flush(self):
        body, self.values = json.dumps({"job": self.job, "values": self.values}).encode(), []
        urllib.request.urlopen(urllib.request.Request(self.url, body, {"Content-Type": "application/json"}), timeout=2)
