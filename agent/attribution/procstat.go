package attribution

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// userHZ is the unit of /proc/<pid>/stat's starttime: USER_HZ, which the
// kernel fixes at 100 for every user-space interface.
const userHZ = 100

// bootTime reads the boot time (btime) from /proc/stat.
func bootTime(procRoot string) (time.Time, error) {
	data, err := os.ReadFile(filepath.Join(procRoot, "stat"))
	if err != nil {
		return time.Time{}, err
	}
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte("btime ")); ok {
			s, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
			if err != nil || s <= 0 {
				return time.Time{}, fmt.Errorf("%s/stat: bad btime %q", procRoot, v)
			}
			return time.Unix(s, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("%s/stat: no btime line", procRoot)
}

// startTime is when the process of a /proc/<pid>/stat started, or zero
// when the line cannot be read. The command name may hold spaces and
// parentheses, so fields are counted from the last ')'.
func startTime(stat []byte, boot time.Time) time.Time {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}
	}
	f := bytes.Fields(stat[i+1:])
	// Field 22 of the line is starttime; f[0] is field 3 (state).
	if len(f) < 20 {
		return time.Time{}
	}
	ticks, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil || ticks > 1<<39 { // beyond 170 years of uptime: garbage
		return time.Time{}
	}
	return boot.Add(time.Duration(ticks) * (time.Second / userHZ))
}
