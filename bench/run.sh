#!/usr/bin/env bash
# bench/run.sh - haul's throughput beside iperf3, in the same run, on
# loopback. Each row is the median of ROUNDS runs of SECONDS seconds, the
# peers taking turns so that drift in the machine hits them alike.
#
#   bench/run.sh [BUILD_DIR]        (ROUNDS=3 SECONDS=5 by default)
#
# Prints a table and the ratio of each row to iperf3 -P1 (one TCP stream),
# the bar for one haul session.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${1:-build}
rounds=${ROUNDS:-3}
secs=${SECONDS_PER_RUN:-5}
perf=$build/bench/haul-perf
[[ -x $perf ]] || { echo "bench/run.sh: build first (scripts/build)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench/run.sh: iperf3 is missing (apt-get install iperf3)" >&2; exit 1; }

port=$((20000 + RANDOM % 20000))
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT

# Waits until something listens on the port, without sleeping blindly.
wait_port() {
  for _ in $(seq 200); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.02
  done
  echo "nothing listens on port $1" >&2
  return 1
}

iperf_run() { # streams
  iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
  wait_port "$port"
  iperf3 -c 127.0.0.1 -p "$port" -P "$1" -t "$secs" -J |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
  wait
}

# Certificates for the TLS rows, made by haul cert.
pki=$tmp/pki
"$build/haul" cert ca "$pki" >/dev/null
"$build/haul" cert server "$pki" localhost >/dev/null
"$build/haul" cert client "$pki" perf >/dev/null

haul_run() { # connections [extra args]
  local conns=$1
  shift
  local server_args=()
  [[ " $* " == *" -k "* ]] && server_args=(-k "$pki")
  "$perf" -s -a "127.0.0.1:$port" "${server_args[@]}" >/dev/null &
  wait_port "$port"
  "$perf" -c "127.0.0.1:$port" -P "$conns" -t "$secs" -j "$@" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])'
  wait
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

rows=("iperf3 -P1" "iperf3 -P4" "haul 1 session, 1 connection" "haul 1 session, 4 connections"
  "haul 1 session, 8 connections" "haul 4 sessions, 4 connections"
  "haul TLS 1.3, 1 connection" "haul TLS 1.3, 2 connections")
for ((r = 0; r < rounds; r++)); do
  iperf_run 1 >>"$tmp/0"
  haul_run 1 >>"$tmp/2"
  iperf_run 4 >>"$tmp/1"
  haul_run 4 >>"$tmp/3"
  haul_run 8 >>"$tmp/4"
  haul_run 4 -S 4 >>"$tmp/5"
  haul_run 1 -k "$pki" >>"$tmp/6"
  haul_run 2 -k "$pki" >>"$tmp/7"
done

echo "loopback, $(nproc) cores, $(uname -r), median of $rounds x ${secs}s, 1 MiB messages"
printf '%-34s %10s %8s\n' "run" "Gbit/s" "ratio"
base=$(median <"$tmp/0")
for i in "${!rows[@]}"; do
  v=$(median <"$tmp/$i")
  printf '%-34s %10.2f %7.2fx\n' "${rows[$i]}" "$v" "$(awk -v a="$v" -v b="$base" 'BEGIN {print a / b}')"
done
