#!/usr/bin/env bash
# Runs one fuzz test for a while: scripts/fuzz.sh FUZZTIME NAME PACKAGE [go test flags...]
#
# Go 1.26's fuzzing coordinator can fail a run that found nothing with a bare
# "context deadline exceeded" when -fuzztime ends while a worker is busy
# (golang/go#75804, fixed in Go 1.27). A finding always writes its failing
# input; such a run writes none. So a run that failed that way, wrote no
# input, and whose seeds and corpus pass when run again is let through, and
# says so. Any other failure fails.
set -u
go=${GO:-go}
fuzztime=$1 name=$2 pkg=$3
shift 3
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$go" test "$@" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
[ "$status" -eq 0 ] && exit 0
# The race's signature: the target's FAIL line followed by that one bare
# line and nothing else of the target's own, and no failing input.
report=$(sed -n "/^--- FAIL: ${name} /,/^FAIL\$/p" "$log" | sed '1d;$d')
if [ "$(echo "$report" | sed 's/^[[:space:]]*//')" = "context deadline exceeded" ] && ! grep -q 'Failing input written' "$log"; then
  echo "fuzz: ${name} stopped with Go's fuzztime race (golang/go#75804) and wrote no failing input; running its corpus again"
  if "$go" test "$@" -run "^${name}\$" "$pkg"; then
    echo "fuzz: ${name}: the corpus passes: the race was not a finding"
    exit 0
  fi
fi
exit "$status"
