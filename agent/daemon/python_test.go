package daemon

import (
	"os"
	"os/exec"
	"testing"
)

// The three-line Python snippet in the README (agent/api/testdata) posts
// markers that the agent accepts, from a real interpreter.
func TestPythonMarkerSnippet(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 is needed to check the step-marker snippet: apt-get install python3")
		}
		t.Skip("no python3:", err)
	}
	snippet, err := os.ReadFile("../api/testdata/loupe_step.py")
	if err != nil {
		t.Fatal(err)
	}
	d := start(t, testConfig(t))
	cmd := exec.Command(py, "-c", string(snippet)+"\nfor i in range(6):\n    loupe_step(i)\n    time.sleep(0.02)\n")
	cmd.Env = append(os.Environ(), "LOUPE_STEPS_URL=http://"+d.APIAddr()+"/v1/steps", "TORCHELASTIC_RUN_ID=pyjob", "RANK=3")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	st := d.tracker.Stats("pyjob")
	if len(st) != 1 || st[0].Rank != 3 || st[0].Steps != 5 || st[0].Iteration != 5 || st[0].PID != cmd.Process.Pid || st[0].Mean < 20e6 {
		t.Fatalf("stats after the snippet ran: %+v", st)
	}
}
