#!/usr/bin/env bash
# Posts a set of sample messages to a running API (`make run` or
# `make docker-run`) and prints each answer's HTTP status and message id.
#
#   scripts/seed.sh                       # http://127.0.0.1:8080
#   API_URL=http://127.0.0.1:9000 API_KEY=secret scripts/seed.sh
#
# It exits non-zero if the API does not answer, or if any answer is not the
# expected one.
set -euo pipefail

api=${API_URL:-http://127.0.0.1:8080}
api=${api%/}

headers=(-H 'Content-Type: application/json')
if [ -n "${API_KEY:-}" ]; then
  headers+=(-H "Authorization: Bearer ${API_KEY}")
fi

# GET /status answers without a key, 200 or 503: any answer means the API runs.
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$api/status" || true)
if [ -z "$code" ] || [ "$code" = 000 ]; then
  echo "seed: the API is not answering at $api. Start it with \`make run\` (or \`make docker-run\`), or set API_URL." >&2
  exit 1
fi

# A time a minute from now, with GNU date (Linux) or BSD date (macOS).
in_a_minute=$(date -u -d '+1 min' +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v+1M +%Y-%m-%dT%H:%M:%SZ)
# Unique per run, so that the first post with it is new and the second a replay.
idempotency_key="seed-$(date +%s)-$$"

failed=0

# post LABEL WANT_STATUS BODY [CURL ARGS...]: posts BODY to /messages and prints
# the status and the message id of the answer.
post() {
  local label=$1 want=$2 body=$3
  shift 3
  local out status id
  if ! out=$(curl -s --max-time 10 -w '\n%{http_code}' "${headers[@]}" "$@" -d "$body" "$api/messages"); then
    printf '%-34s no answer from %s\n' "$label" "$api" >&2
    failed=1
    return
  fi
  status=${out##*$'\n'}
  id=$(printf '%s' "${out%$'\n'*}" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p' | head -n 1)
  printf '%-34s %s  id=%s\n' "$label" "$status" "${id:--}"
  if [ "$status" = 401 ]; then
    echo "seed: the API wants a key: run with API_KEY set to its key (API_KEY=... make seed)." >&2
    exit 1
  fi
  if [ "$status" != "$want" ]; then
    printf '%-34s want %s, got: %s\n' "" "$want" "${out%$'\n'*}" >&2
    failed=1
  fi
}

post "hello"                        202 '{"to":"+905551111111","content":"Hello from the outbox"}'
post "order shipped"                202 '{"to":"+905552222222","content":"Your order #1042 has shipped"}'
post "verification code"            202 '{"to":"+14155550100","content":"Your code is 483920"}'
post "appointment reminder"         202 '{"to":"+447700900123","content":"Reminder: dentist tomorrow at 10:30"}'
post "unicode content"              202 '{"to":"+905553333333","content":"Merhaba! Siparişiniz yolda 🚚"}'
post "payment received"             202 '{"to":"+4915112345678","content":"Payment of 49.90 EUR received, thank you"}'
post "delivery window"              202 '{"to":"+33612345678","content":"Your parcel arrives between 14:00 and 16:00"}'
post "scheduled (sendAt +1 min)"    202 "{\"to\":\"+905554444444\",\"content\":\"Sent a minute later\",\"sendAt\":\"$in_a_minute\"}"
post "idempotent (first)"           202 '{"to":"+905555555555","content":"Exactly one of these"}' -H "Idempotency-Key: $idempotency_key"
post "idempotent (repeat: replayed)" 200 '{"to":"+905555555555","content":"Exactly one of these"}' -H "Idempotency-Key: $idempotency_key"

echo
echo "Watch them: curl -s '$api/messages?limit=10'${API_KEY:+ -H 'Authorization: Bearer \$API_KEY'}"
exit $failed
