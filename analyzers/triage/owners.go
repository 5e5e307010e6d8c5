package triage

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"

	"go.yaml.in/yaml/v3"
)

// Owners maps what an incident is about to the teams that own it. It is
// loaded from an owners file:
//
//	teams:
//	  - name: ml-infra
//	    channels: [infra-slack]      # alert targets (webhook names)
//	rules:
//	  - team: ml-infra
//	    jobs: ["llama-*"]            # job names (glob)
//	    hosts: ["gpu-rack1-*"]       # host names (glob)
//	    paths: ["*/data/loader.py"]  # code paths in stack frames (glob)
//	    frames: ["*DataLoader*"]     # function names in stack frames (glob)
//	    categories: [input-pipeline] # incident categories
//	    priority: 10
//
// Patterns are wildcards: "*" matches any run of characters (including "/"
// and "."), "?" any one character, everything else itself. A rule matches
// when every matcher it sets matches (a list matches when any of its
// patterns does); a rule with no matchers matches everything.
// When rules of different teams match, conflicts resolve as documented in
// Match.
type Owners struct {
	Teams []Team `yaml:"teams"`
	Rules []Rule `yaml:"rules"`
}

// Team is an owning team and where its alerts go.
type Team struct {
	Name     string   `yaml:"name"`
	Channels []string `yaml:"channels"`
}

// Rule assigns matching incidents to a team.
type Rule struct {
	Team       string   `yaml:"team"`
	Jobs       []string `yaml:"jobs"`
	Hosts      []string `yaml:"hosts"`
	Paths      []string `yaml:"paths"`
	Frames     []string `yaml:"frames"`
	Categories []string `yaml:"categories"`
	Priority   int      `yaml:"priority"`
}

// Subject is what ownership is decided on.
type Subject struct {
	Job, Category string
	Hosts         []string
	// Frames are stack frames: function names and "file:line" code paths.
	Frames []string
}

// LoadOwners reads and checks an owners file.
func LoadOwners(file string) (*Owners, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("owners file: %w", err)
	}
	return ParseOwners(data)
}

// ParseOwners decodes an owners file strictly (unknown keys are errors) and
// checks that every rule names a known team and every pattern is valid.
func ParseOwners(data []byte) (*Owners, error) {
	var o Owners
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&o); err != nil && !errors.Is(err, io.EOF) { // empty file: no rules
		return nil, fmt.Errorf("owners file: %w", err)
	}
	teams := map[string]bool{}
	for _, t := range o.Teams {
		if t.Name == "" || teams[t.Name] {
			return nil, fmt.Errorf("owners file: team name %q is empty or repeated", t.Name)
		}
		teams[t.Name] = true
	}
	for i, r := range o.Rules {
		if !teams[r.Team] {
			return nil, fmt.Errorf("owners file: rule %d names team %q, which is not under teams", i+1, r.Team)
		}
		for _, list := range [][]string{r.Jobs, r.Hosts, r.Paths, r.Frames, r.Categories} {
			for _, p := range list {
				if p == "" {
					return nil, fmt.Errorf("owners file: rule %d has an empty pattern", i+1)
				}
			}
		}
	}
	return &o, nil
}

func anyMatch(patterns, values []string) bool {
	for _, p := range patterns {
		for _, v := range values {
			if wildcard(p, v) {
				return true
			}
		}
	}
	return false
}

// wildcard reports whether s matches pattern p ("*" any run, "?" one byte),
// backtracking only to the last star, so it runs in O(len(p)*len(s)).
func wildcard(p, s string) bool {
	pi, si := 0, 0
	star, mark := -1, 0
	for si < len(s) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == s[si]):
			pi, si = pi+1, si+1
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, si // first try the star matching nothing
			pi++
		case star >= 0:
			mark++ // then let it swallow one more byte
			pi, si = star+1, mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// specificity counts the matchers a rule sets.
func (r *Rule) specificity() int {
	n := 0
	for _, l := range [][]string{r.Jobs, r.Hosts, r.Paths, r.Frames, r.Categories} {
		if len(l) > 0 {
			n++
		}
	}
	return n
}

func (r *Rule) matches(s Subject) bool {
	check := func(patterns, values []string) bool { return len(patterns) == 0 || anyMatch(patterns, values) }
	return check(r.Jobs, []string{s.Job}) && check(r.Hosts, s.Hosts) && check(r.Categories, []string{s.Category}) &&
		check(r.Paths, s.Frames) && check(r.Frames, s.Frames)
}

// Match returns the owning teams and their alert channels. Among matching
// rules the highest priority wins; at equal priority the most specific rule
// (the one setting the most kinds of matcher) wins; rules still tied all
// win, so the incident names every one of their teams.
func (o *Owners) Match(s Subject) (teams, channels []string) {
	if o == nil {
		return nil, nil
	}
	var best []*Rule
	for i := range o.Rules {
		r := &o.Rules[i]
		if !r.matches(s) {
			continue
		}
		if len(best) == 0 || r.Priority > best[0].Priority ||
			r.Priority == best[0].Priority && r.specificity() > best[0].specificity() {
			best = []*Rule{r}
		} else if r.Priority == best[0].Priority && r.specificity() == best[0].specificity() {
			best = append(best, r)
		}
	}
	for _, r := range best {
		if !slices.Contains(teams, r.Team) {
			teams = append(teams, r.Team)
		}
	}
	sort.Strings(teams)
	for _, t := range o.Teams {
		if slices.Contains(teams, t.Name) {
			for _, c := range t.Channels {
				if !slices.Contains(channels, c) {
					channels = append(channels, c)
				}
			}
		}
	}
	return teams, channels
}
