package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// summarizeLogs counts the warnings and errors each process logged during
// the run, with the most frequent messages: where retries, timeouts and
// contention show up.
func (b *bench) summarizeLogs() {
	if b.stack == nil {
		return
	}
	r := b.rep
	r.section("Warnings and errors the processes logged (whole run)")
	for _, role := range append([]string{"mongodb"}, projectRoles...) {
		p := b.stack.procs[role]
		if p == nil {
			continue
		}
		warn, errs, top := countLogLevels(p.log)
		r.set("log_warnings_"+role, warn)
		r.set("log_errors_"+role, errs)
		v := fmt.Sprintf("%d warnings, %d errors", warn, errs)
		if len(top) > 0 {
			v += ": " + strings.Join(top, "; ")
		}
		r.line(role, v)
	}
}

// countLogLevels reads a JSON log and returns its WARN and ERROR counts and
// the three most frequent of those messages.
func countLogLevels(path string) (warn, errs int, top []string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, nil
	}
	defer f.Close()
	byMsg := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var rec struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &rec) != nil {
			continue
		}
		switch rec.Level {
		case "WARN":
			warn++
		case "ERROR":
			errs++
		default:
			continue
		}
		byMsg[strings.ToLower(rec.Level)+" "+fmt.Sprintf("%q", rec.Msg)]++
	}
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range byMsg {
		all = append(all, kv{k, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n || all[i].n == all[j].n && all[i].k < all[j].k })
	for i := 0; i < len(all) && i < 3; i++ {
		top = append(top, fmt.Sprintf("%dx %s", all[i].n, all[i].k))
	}
	return warn, errs, top
}
