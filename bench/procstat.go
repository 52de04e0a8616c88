package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports (reading it needs sysconf,
// which needs cgo).
const clockTicks = 100

// procCPU returns the CPU time (user + system) process pid has used.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) from the contents
// of /proc/<pid>/stat. The command name (field 2) may hold spaces and
// parentheses, so the fields are counted from its closing parenthesis.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, errors.New("short stat")
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed utime or stime")
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// procHWM returns the peak resident set size (VmHWM) of pid, in bytes.
func procHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseStatusKB(b, "VmHWM:")
}

func parseStatusKB(b []byte, field string) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, fmt.Errorf("no %s line", field)
}

// machineCPU returns the busy and total CPU time of the whole machine
// (all CPUs) from /proc/stat.
func machineCPU() (busy, total time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, errors.New("malformed /proc/stat")
	}
	var sum, idle uint64
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		// guest and guest_nice (fields 9, 10) are already in user and nice.
		if i >= 8 {
			break
		}
		sum += n
		if i == 3 || i == 4 { // idle, iowait
			idle += n
		}
	}
	tick := time.Second / clockTicks
	return time.Duration(sum-idle) * tick, time.Duration(sum) * tick, nil
}

// findProcess returns the oldest process whose command name is comm and
// whose command line contains want (any, if want is empty), or 0.
func findProcess(comm, want string) int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	best, bestStart := 0, uint64(0)
	for _, d := range dirs {
		c, err := os.ReadFile(d + "/comm")
		if err != nil || strings.TrimSpace(string(c)) != comm {
			continue
		}
		cmdline, _ := os.ReadFile(d + "/cmdline")
		if want != "" && !strings.Contains(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})), want) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(d))
		start := procStart(pid)
		if best == 0 || start < bestStart {
			best, bestStart = pid, start
		}
	}
	return best
}

// procStart returns field 22 of /proc/<pid>/stat, the start time in ticks
// since boot.
func procStart(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0
	}
	n, _ := strconv.ParseUint(f[19], 10, 64)
	return n
}

// watched are the processes whose CPU a phase reports: the project's own,
// the embedded MongoDB, RabbitMQ, Redis and the bench itself (its load
// generator and webhook sink).
func (b *bench) watched() map[string]int {
	w := map[string]int{"bench": os.Getpid()}
	for _, role := range append([]string{"mongodb"}, projectRoles...) {
		if p := b.stack.procs[role]; p != nil {
			w[role] = p.pid()
		}
	}
	if pid := findProcess("beam.smp", "rabbit"); pid != 0 {
		w["rabbitmq"] = pid
	}
	_, port, _ := strings.Cut(b.redisAddr(), ":")
	if pid := findProcess("redis-server", ":"+port); pid != 0 {
		w["redis"] = pid
	}
	return w
}

// cpuSample is the CPU used so far by each watched process and the machine.
type cpuSample struct {
	at          time.Time
	cpu         map[string]time.Duration
	busy, total time.Duration
}

func (b *bench) sampleCPU() cpuSample {
	s := cpuSample{at: time.Now(), cpu: map[string]time.Duration{}}
	for name, pid := range b.watched() {
		if d, err := procCPU(pid); err == nil {
			s.cpu[name] = d
		}
	}
	s.busy, s.total, _ = machineCPU()
	return s
}

// cpuDelta is what each process used between two samples.
type cpuDelta struct {
	wall     time.Duration
	cpu      map[string]time.Duration
	busy     time.Duration // the machine's busy CPU time, all CPUs
	busyFrac float64       // share of the machine's CPU time that was busy
}

func (a cpuSample) to(z cpuSample) cpuDelta {
	d := cpuDelta{wall: z.at.Sub(a.at), cpu: map[string]time.Duration{}}
	for name, v := range z.cpu {
		if v0, ok := a.cpu[name]; ok {
			d.cpu[name] = v - v0
		}
	}
	d.busy = z.busy - a.busy
	if t := z.total - a.total; t > 0 {
		d.busyFrac = float64(z.busy-a.busy) / float64(t)
	}
	return d
}

func (d cpuDelta) project() time.Duration {
	var sum time.Duration
	for _, r := range projectRoles {
		sum += d.cpu[r]
	}
	return sum
}

// other is the CPU time the machine spent on processes the bench does not
// watch (other work on a shared machine, which disturbs the figures).
func (d cpuDelta) other() time.Duration {
	o := d.busy
	for _, v := range d.cpu {
		o -= v
	}
	return max(o, 0)
}

// loadAverage returns the 1-minute load average, or -1.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}
