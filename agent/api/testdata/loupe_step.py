import json, os, time, urllib.request
def loupe_step(i, url=os.environ.get("LOUPE_STEPS_URL", "http://127.0.0.1:9401/v1/steps")):
    urllib.request.urlopen(urllib.request.Request(url, json.dumps({"job": os.environ.get("TORCHELASTIC_RUN_ID", "myjob"), "rank": int(os.environ.get("RANK", 0)), "iteration": i, "pid": os.getpid(), "time": time.time()}).encode(), {"Content-Type": "application/json"}), timeout=1)
