package traces

import (
	"strings"
	"testing"
)

func TestReadNCCLHang(t *testing.T) {
	good := `{"id":"hang-1","state":"hung","seq":140,"ranks":[{"rank":2,"pid":9,"state":"missing","stack":["f"]},{"rank":0,"state":"arrived"}]}`
	h, err := ReadNCCLHang(strings.NewReader(good))
	if err != nil || h.Seq != 140 || len(h.Ranks) != 2 || h.Ranks[0].Stack[0] != "f" {
		t.Fatalf("ReadNCCLHang = %+v, %v", h, err)
	}
	for name, bad := range map[string]string{
		"not json":   `{`,
		"state":      `{"id":"h","state":"stuck"}`,
		"no id":      `{"state":"hung"}`,
		"rank state": `{"id":"h","state":"hung","ranks":[{"rank":1,"state":"lost"}]}`,
		"too large":  `{"id":"` + strings.Repeat("x", MaxNCCLHangSize) + `"}`,
	} {
		if _, err := ReadNCCLHang(strings.NewReader(bad)); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// FuzzReadNCCLHang: hang reports come from agents; whatever they hold,
// decoding does not panic and what it accepts is well-formed.
func FuzzReadNCCLHang(f *testing.F) {
	f.Add(`{"id":"hang-1","state":"recovered","ranks":[{"rank":2,"state":"missing"}]}`)
	f.Add(`{"id":"x","state":"hung","ranks":[{"state":"arrived","threads":[{"tid":1}]}]}`)
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ReadNCCLHang(strings.NewReader(s))
		if err != nil {
			return
		}
		if h.ID == "" || (h.State != HangStateHung && h.State != HangStateRecovered) {
			t.Fatalf("accepted %+v", h)
		}
	})
}
