#!/usr/bin/env bash
# Checks that the services the tests and `make run` need answer, and says how
# to start the ones that do not. With --start it tries to start them first
# (CI does this; the machine normally starts them before a session).
set -u
start=0
[ "${1:-}" = "--start" ] && start=1

rabbit_host=127.0.0.1 rabbit_port=5672
redis_host=127.0.0.1 redis_port=6379

up() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_up() { # host port seconds
  for _ in $(seq 1 "$3"); do up "$1" "$2" && return 0; sleep 1; done
  return 1
}

fail=0
if ! up $rabbit_host $rabbit_port; then
  if [ $start = 1 ] && command -v rabbitmq-server >/dev/null; then
    echo "starting RabbitMQ: rabbitmq-server -detached"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_up $rabbit_host $rabbit_port 60 || true
  fi
  if ! up $rabbit_host $rabbit_port; then
    echo "RabbitMQ is not answering on $rabbit_host:$rabbit_port. Start it with: rabbitmq-server -detached" >&2
    fail=1
  fi
fi
if ! up $redis_host $redis_port; then
  if [ $start = 1 ] && command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /var/lib/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis >/dev/null 2>&1 || true
    wait_up $redis_host $redis_port 20 || true
  fi
  if ! up $redis_host $redis_port; then
    echo "Redis is not answering on $redis_host:$redis_port. Start it with:" >&2
    echo '  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis' >&2
    fail=1
  fi
fi
exit $fail
