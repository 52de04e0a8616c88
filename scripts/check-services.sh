#!/usr/bin/env bash
# Checks that the services the tests and `make run` need answer, and says how
# to start the ones that do not. With --start it tries to start them first
# (CI does this; the machine normally starts them before a session). With
# --tools it also checks the tools some tests run (make test asks for this).
set -u
start=0 tools=0
for arg in "$@"; do
  case $arg in
    --start) start=1 ;;
    --tools) tools=1 ;;
    *) echo "usage: $0 [--start] [--tools]" >&2; exit 2 ;;
  esac
done

# hostport URI DEFAULT_PORT: the host and port a RABBITMQ_URI or REDIS_URI
# (amqp://user:pass@host:port/vhost, redis://host:port/0 or host:port) names.
hostport() {
  local u=$1 host port
  u=${u#*://}; u=${u##*@}; u=${u%%/*}; u=${u%%\?*}
  if [[ $u == \[* ]]; then host=${u%%]*}; host=${host#[}; port=${u#*]}; port=${port#:}
  elif [[ $u == *:* ]]; then host=${u%:*}; port=${u##*:}
  else host=$u; port=
  fi
  echo "${host:-127.0.0.1} ${port:-$2}"
}
rabbit_default=5672
[[ ${RABBITMQ_URI:-} == amqps://* ]] && rabbit_default=5671
read -r rabbit_host rabbit_port < <(hostport "${RABBITMQ_URI:-amqp://127.0.0.1:5672/}" $rabbit_default)
read -r redis_host redis_port < <(hostport "${REDIS_URI:-127.0.0.1:6379}" 6379)
# local HOST PORT DEFAULT_PORT: whether the service is the local default one
# this script knows how to start.
local_default() { { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ] || [ "$1" = ::1 ]; } && [ "$2" = "$3" ]; }

# Bounded where coreutils' timeout is at hand: an address that drops
# packets would hold a bare connect for the kernel's TCP timeout, minutes.
up() {
  if command -v timeout >/dev/null; then
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

# bounded SECONDS CMD...: CMD, ended after SECONDS where timeout is at hand
# (rabbitmqctl waits without limit on a broker node that is half up).
bounded() {
  if command -v timeout >/dev/null; then
    timeout "$@"
  else
    shift
    "$@"
  fi
}

wait_up() { # host port seconds
  for _ in $(seq 1 "$3"); do up "$1" "$2" && return 0; sleep 1; done
  return 1
}

# The Docker alternative to starting them natively (mk/docker.mk): for make
# run; the tests also manage the local broker with rabbitmqctl and start
# redis-server binaries of their own (--tools), which containers do not give.
docker_infra='make docker-infra, which starts MongoDB, RabbitMQ and Redis in containers on 127.0.0.1:27017, 5672 and 6379'
[ $tools = 1 ] && docker_infra="$docker_infra; that is enough for make run, not for make test, which needs RabbitMQ and Redis installed here"

fail=0
if ! up $rabbit_host $rabbit_port; then
  if [ $start = 1 ] && local_default "$rabbit_host" "$rabbit_port" 5672 && command -v rabbitmq-server >/dev/null; then
    echo "starting RabbitMQ: rabbitmq-server -detached"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_up $rabbit_host $rabbit_port 60 || true
  fi
  if ! up $rabbit_host $rabbit_port; then
    if local_default "$rabbit_host" "$rabbit_port" 5672; then
      echo "RabbitMQ is not answering on $rabbit_host:$rabbit_port. Start it with: rabbitmq-server -detached" >&2
      echo "  (or with Docker: $docker_infra)" >&2
    else
      echo "RabbitMQ is not answering on $rabbit_host:$rabbit_port, where RABBITMQ_URI points" >&2
    fi
    fail=1
  fi
fi
if ! up $redis_host $redis_port; then
  if [ $start = 1 ] && local_default "$redis_host" "$redis_port" 6379 && command -v redis-server >/dev/null; then
    echo "starting Redis"
    # It writes nothing (no snapshots, no AOF); --dir only has to exist.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir "${TMPDIR:-/tmp}" >/dev/null 2>&1 || true
    wait_up $redis_host $redis_port 20 || true
  fi
  if ! up $redis_host $redis_port; then
    if local_default "$redis_host" "$redis_port" 6379; then
      echo "Redis is not answering on $redis_host:$redis_port. Start it with:" >&2
      echo '  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir "${TMPDIR:-/tmp}"' >&2
      echo "  (or with Docker: $docker_infra)" >&2
    else
      echo "Redis is not answering on $redis_host:$redis_port, where REDIS_URI points" >&2
    fi
    fail=1
  fi
fi
# The tools some tests run besides the services: rabbitmqctl to close
# connections from the broker's side, a redis-server binary for the fault
# tests' private Redis, and unshare for a network namespace in which nothing
# answers (the start hints' test).
if [ $tools = 1 ]; then
  if ! command -v rabbitmqctl >/dev/null; then
    echo "rabbitmqctl is not on PATH: it comes with RabbitMQ (apt-get install rabbitmq-server)" >&2
    fail=1
  elif up $rabbit_host $rabbit_port && ! bounded 60 rabbitmqctl -q list_connections name >/dev/null 2>&1; then
    echo "rabbitmqctl cannot manage the local RabbitMQ (or did not answer within 60 s): run the tests as a user that may (root, or one with the broker's Erlang cookie in ~/.erlang.cookie)" >&2
    fail=1
  fi
  if ! command -v redis-server >/dev/null; then
    echo "redis-server is not on PATH: the fault tests start a Redis of their own (apt-get install redis-server)" >&2
    fail=1
  fi
  if ! command -v unshare >/dev/null; then
    echo "unshare is not on PATH (apt-get install util-linux)" >&2
    fail=1
  elif ! unshare -rn true 2>/dev/null; then
    echo "unshare -rn cannot make a network namespace: unprivileged user namespaces are off (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0), or run the tests as root" >&2
    fail=1
  fi
fi
exit $fail
