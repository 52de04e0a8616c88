package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
)

// report collects the figures of a run: rows of the human-readable table
// and the flat key/value pairs of the JSON line, in the order measured.
type report struct {
	title string
	keys  []string
	vals  map[string]any
	rows  []row
	errs  []string
	met   int
	total int
}

type row struct {
	section              bool
	label, value, target string
	verdict              string
}

func newReport() *report { return &report{vals: map[string]any{}} }

// set records a figure for the JSON line. Floats are rounded to three
// decimals; nil means "not measured".
func (r *report) set(key string, v any) {
	if f, ok := v.(float64); ok {
		if math.IsNaN(f) || math.IsInf(f, 0) {
			v = nil
		} else {
			v = math.Round(f*1000) / 1000
		}
	}
	if _, ok := r.vals[key]; !ok {
		r.keys = append(r.keys, key)
	}
	r.vals[key] = v
}

func (r *report) section(title string) { r.rows = append(r.rows, row{section: true, label: title}) }

// line adds a figure without a target.
func (r *report) line(label, value string) {
	r.rows = append(r.rows, row{label: label, value: value})
}

// check adds a figure with its target and whether it was met.
func (r *report) check(label, value, target string, met bool) {
	v := "MISSED"
	if met {
		v = "met"
		r.met++
	}
	r.total++
	r.rows = append(r.rows, row{label: label, value: value, target: target, verdict: v})
}

// fail records a part of the run that could not be measured.
func (r *report) fail(what string, err error) {
	r.errs = append(r.errs, fmt.Sprintf("%s: %v", what, err))
	r.rows = append(r.rows, row{label: what, value: "error (see below)"})
}

// print writes the table, then the JSON object as the last line.
func (r *report) print(w io.Writer, runErr error) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, r.title)
	// One alignment for the whole table, sections included.
	// Values of rows without a target may run long; they do not widen
	// the value column.
	var wl, wv, wt int
	for _, x := range r.rows {
		if x.section {
			continue
		}
		wl = max(wl, len(x.label))
		if x.target != "" {
			wv, wt = max(wv, len(x.value)), max(wt, len(x.target))
		}
	}
	for _, x := range r.rows {
		if x.section {
			fmt.Fprintf(w, "\n%s\n", x.label)
			continue
		}
		line := fmt.Sprintf("  %-*s  %-*s  %-*s  %s", wl, x.label, wv, x.value, wt, x.target, x.verdict)
		fmt.Fprintln(w, strings.TrimRight(line, " "))
	}
	fmt.Fprintf(w, "\nTargets met: %d of %d\n", r.met, r.total)
	for _, e := range r.errs {
		fmt.Fprintln(w, "error:", e)
	}
	if runErr != nil {
		fmt.Fprintln(w, "run incomplete:", runErr)
	}
	r.set("targets_met", r.met)
	r.set("targets_total", r.total)
	if len(r.errs) > 0 {
		r.set("errors", r.errs)
	}
	if runErr != nil {
		r.set("run_error", runErr.Error())
	}
	fmt.Fprintln(w, r.json())
}

// json returns the figures as one JSON object, keys in the order measured.
func (r *report) json() string {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range r.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(r.vals[k])
		if err != nil {
			vb = []byte("null")
		}
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(vb)
	}
	buf.WriteByte('}')
	return buf.String()
}
