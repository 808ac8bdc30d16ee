#!/usr/bin/env bash
# bench/wan.sh - haul across emulated long links, beside the tools a user
# would otherwise pick, in the same run. Each link profile is two network
# namespaces joined by wanem (a userspace WAN emulator: delay, rate,
# drop-tail queue, random loss); the senders run in side A, the servers in
# side B:
#
#   1  50 ms RTT, 1 Gbit/s, MTU 9000
#   2  50 ms RTT, 1 Gbit/s, MTU 9000, 0.5% random loss each way (seed 1)
#   3  200 ms RTT, 1 Gbit/s, MTU 9000
#   4  100 ms RTT, 10 Mbit/s, MTU 1500 (what such a link has)
#
# For each profile, in one run:
#   - memory to memory, iperf3 -P N beside haul bench -P N for each N, the
#     same seconds each, neither omitting its warm-up; iperf3 takes at most
#     128 streams, so above that several iperf3 clients run at once against
#     as many servers (see iperf_run for how their figures add up);
#   - haul bench -P auto when the built haul accepts it, and -P 8 over
#     mutual TLS 1.3 beside -P 8 in plaintext;
#   - one file of SIZE (random) pushed with haul push (its default -P),
#     socat, an rsync daemon and scp (an sshd of the run's own), each
#     checked to have arrived whole;
#   - per row, wanem's drop_queue (the bottleneck queue overflowed: TCP's
#     congestion signal) and kernel_drop (the emulator could not keep up:
#     the row measured the emulator, not the transport), and the peak RSS
#     of haul and hauld.
# The hosts' TCP buffer defaults are kept: a transport for long links must
# fill them without tuning. TCP_BUF=64MB raises tcp_rmem/tcp_wmem inside
# the namespaces instead (wanem-up --tcp-buf), and the table says so.
#
#   bench/wan.sh [BUILD_DIR]      (root; about 30 minutes, see bench/README.md)
#
# Knobs (environment):
#   PROFILES="1 2 3 4"   which profiles
#   NS="1 8 32 64 256 1000"   the connection counts N
#   SECONDS=S            seconds per memory row (default 10, 12 at 200 ms)
#   SIZE=1G              the pushed file (K, M, G); on a slow link capped
#                        at about 30 s of its line rate
#   PUSHERS="haul socat rsync scp"   which pushes ("" for none)
#   TCP_BUF=64MB         raise the namespaces' TCP buffers (default: no)
#   CC=cubic             the congestion control in both namespaces (default:
#                        the host's, which they inherit; the table says which)
#   QUEUE=8MB            wanem's bottleneck queue per direction
#   HAULD_ARGS="--memory 1G"   more options for hauld (split on spaces)
#   OUT=FILE             also write the tables to FILE
#   WANEM_DIR=DIR        where wanem-up is (default: shared/tools/wanem
#                        beside the repository, or wanem-up on PATH)
#
# The tables go to stdout (and OUT), progress to stderr. Everything is
# torn down on exit or interrupt: the namespaces, every daemon, the files.
set -euo pipefail
# Bash counts SECONDS up by itself: only a value from the environment is
# the knob.
seconds_knob=$(printenv SECONDS || true)
command_line=$(
  for k in PROFILES NS SECONDS SIZE PUSHERS TCP_BUF CC QUEUE HAULD_ARGS OUT WANEM_DIR; do
    v=$(printenv "$k" || true)
    [[ -n $v ]] && printf '%s=%q ' "$k" "$v"
  done
  printf 'bench/wan.sh'
  printf ' %q' "$@"
)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

die() {
  echo "bench/wan.sh: $*" >&2
  exit 1
}
say() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

((EUID == 0)) || die "needs root (network namespaces, daemons in them): sudo bench/wan.sh"
build=$(realpath "${1:-build}")
[[ -x $build/haul && -x $build/hauld ]] || die "no haul or hauld in $build: build first (scripts/build)"

# ---- the tools: installed when missing -------------------------------------
deps=(iperf3:iperf3 socat:socat rsync:rsync /usr/sbin/sshd:openssh-server scp:openssh-client
  ssh-keygen:openssh-client openssl:openssl python3:python3 ip:iproute2 ss:iproute2 chrt:util-linux
  cmp:diffutils timeout:coreutils /usr/bin/time:time cc:gcc)
missing=()
for d in "${deps[@]}"; do
  command -v "${d%%:*}" >/dev/null || [[ " ${missing[*]} " == *" ${d#*:} "* ]] || missing+=("${d#*:}")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } >&2 ||
    die "missing tools; install them with: apt-get install ${missing[*]}"
fi

wanem_dir=${WANEM_DIR:-}
if [[ -z $wanem_dir ]]; then
  for d in "$repo/../shared/tools/wanem" "$repo/../../shared/tools/wanem" /work/shared/tools/wanem; do
    [[ -x $d/wanem-up ]] && { wanem_dir=$d; break; }
  done
  [[ -n $wanem_dir ]] || { command -v wanem-up >/dev/null && wanem_dir=$(dirname "$(command -v wanem-up)"); }
fi
[[ -n $wanem_dir && -x $wanem_dir/wanem-up ]] ||
  die "wanem-up not found: set WANEM_DIR to the wanem directory (shared/tools/wanem)"
wanem_dir=$(realpath "$wanem_dir")

# ---- the knobs -----------------------------------------------------------------
profiles=${PROFILES:-1 2 3 4}
ns_list=${NS:-1 8 32 64 256 1000}
pushers=${PUSHERS-haul socat rsync scp}
tcp_buf=${TCP_BUF:-}
cc=${CC:-}
queue=${QUEUE:-8MB}
out=${OUT:-}
to_bytes() {
  local v=${1^^}
  [[ $v =~ ^([0-9]+)(K|M|G|KB|MB|GB|KIB|MIB|GIB)?$ ]] || die "bad size '$1'"
  case ${BASH_REMATCH[2]:0:1} in
  K) echo $((BASH_REMATCH[1] << 10)) ;;
  M) echo $((BASH_REMATCH[1] << 20)) ;;
  G) echo $((BASH_REMATCH[1] << 30)) ;;
  *) echo "${BASH_REMATCH[1]}" ;;
  esac
}
size_bytes=$(to_bytes "${SIZE:-1G}")
[[ -z $seconds_knob || $seconds_knob =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a whole number of seconds"
for n in $ns_list; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "NS: '$n' is not a connection count"; done
for p in $pushers; do [[ $p =~ ^(haul|socat|rsync|scp)$ ]] || die "PUSHERS: unknown '$p'"; done

# Profile: RTT, rate as wanem takes it, rate in bit/s, loss, MTU, seconds.
profile() { # id
  case $1 in
  1) echo "50ms 1gbit 1000000000 0 9000 10" ;;
  2) echo "50ms 1gbit 1000000000 0.5% 9000 10" ;;
  3) echo "200ms 1gbit 1000000000 0 9000 12" ;;
  4) echo "100ms 10mbit 10000000 0 1500 10" ;;
  *) die "PROFILES: unknown profile '$1' (1 2 3 4)" ;;
  esac
}
for p in $profiles; do profile "$p" >/dev/null; done

# -P auto is in the build when the client takes it: a usage error (exit 1)
# comes at once, an accepted count fails later to reach a closed port.
auto=0
rc=0
timeout 20 "$build/haul" bench -P auto --plaintext --timeout 1 haul://127.0.0.1:1 >/dev/null 2>&1 || rc=$?
((rc != 1)) && auto=1
# haul push's default -P, as its help says it (the text may wrap).
push_default=$("$build/haul" --help 2>&1 | tr -s ' \n' ' ' |
  sed -n 's/.*-P, --connections[^(]*(default \([A-Za-z0-9]*\).*/\1/p')

# ---- state and teardown -----------------------------------------------------
ulimit -n "$(ulimit -Hn)"
tmp=$(mktemp -d "${TMPDIR:-/dev/shm}/haul-wan.XXXXXX")
name=hw$$
ns_a=$name-a
ns_b=$name-b
# Addresses and ports of the run's own, not wanem's defaults, so that a
# kill aimed at another emulated link's daemons by their command line
# spares these.
addr_a=10.79.0.1
addr=10.79.0.2
pids=()
iperf_pids=()
hauld_plain=
hauld_tls=
made_run_sshd=0
allowed_cc=
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  "$wanem_dir/wanem-down" --kill "$name" >/dev/null 2>&1
  ((made_run_sshd)) && rmdir /run/sshd 2>/dev/null
  [[ -n $allowed_cc ]] && sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed_cc"
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
report=$tmp/report.md
emit() { printf '%s\n' "$*" | tee -a "$report"; }

in_a() { ip netns exec "$ns_a" "$@"; }
in_b() { ip netns exec "$ns_b" "$@"; }
# Starts a daemon in side B, remembering its PID: ip netns exec execs it,
# and so does the shell's child (a function here would stay a subshell
# between them, and its PID would not be the daemon's).
start_b() { # log command...
  local log=$1
  shift
  ip netns exec "$ns_b" "$@" >>"$log" 2>&1 &
  pids+=($!)
}
stop_pid() {
  local p=$1 i
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for i in "${!pids[@]}"; do [[ ${pids[$i]} == "$p" ]] && unset 'pids[i]'; done
  return 0
}
# Waits until side B listens on the port, without sleeping blindly; fails
# when the daemon that should listen has gone.
wait_port() { # port pid
  local _
  for _ in $(seq 1000); do
    in_b ss -Hltn "sport = :$1" | grep -q . && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.01
  done
  return 1
}
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

# wanem's counters, both directions added: "drop_queue kernel_drop
# queued_bytes".
wan_pid=
wan_log=
wan_stats() {
  local lines
  lines=$(wc -l <"$wan_log")
  kill -USR1 "$wan_pid"
  for _ in $(seq 500); do
    (($(wc -l <"$wan_log") > lines)) && break
    sleep 0.01
  done
  tail -n 1 "$wan_log" | tr ' ' '\n' | awk -F= '
    $1 == "drop_queue" { q += $2 } $1 == "kernel_drop" { k += $2 } $1 == "queued_bytes" { b += $2 }
    END { print q + 0, k + 0, b + 0 }'
}
# A row starts on an empty link: what the last row left in the
# bottleneck queue (seconds of it on a slow link with a deep buffer)
# would delay this row's first round trips, whichever tool it is.
row_stats_begin() {
  local qb
  for _ in $(seq 300); do
    read -r dq0 kd0 qb < <(wan_stats)
    ((qb == 0)) && return
    sleep 0.1
  done
}
row_stats_end() { # -> rdq rkd: the row's drop_queue and kernel_drop
  local dq kd
  read -r dq kd _ < <(wan_stats)
  rdq=$((dq - dq0)) rkd=$((kd - kd0))
  ((rkd == 0)) || emulator_bound=1
}
# The peak RSS of hauld since the last reset (clear_refs 5), in MiB.
hauld_peak_reset() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
hauld_peak() { awk '/VmHWM/ { printf "%d", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }

# ---- the runs ----------------------------------------------------------------
iperf_base=5201
iperf_max=128
# iperf3 -P N as ceil(N/128) clients at once; prints what the servers
# received in Gbit/s, or "fail: why". One client's figure is its own. The
# clients of one row do not start together (each connects its streams one
# after the other, and a lost SYN costs a second), so adding up their rates
# would count the link twice while some run alone: their bytes are added
# up and divided by the time from the first one's start to the last one's
# end instead, each one's end taken from the clock when it exits.
iperf_run() { # n secs
  local n=$1 secs=$2 k i s cpids=()
  k=$(((n + iperf_max - 1) / iperf_max))
  for ((i = 0; i < k; i++)); do
    s=$((n / k + (i < n % k ? 1 : 0)))
    (
      in_a timeout --foreground -k 5 $((secs * 3 + 120)) iperf3 -c "$addr" \
        -p $((iperf_base + i)) -P "$s" -t "$secs" -i 0 -J >"$tmp/iperf.$i.json" 2>&1 || true
      now >"$tmp/iperf.$i.end"
    ) &
    cpids+=($!)
  done
  for p in "${cpids[@]}"; do wait "$p" || true; done
  python3 - "$tmp" "$k" <<'PY'
import json, sys
tmp, k = sys.argv[1], int(sys.argv[2])
total, starts, ends = 0, [], []
for i in range(k):
    try:
        with open("%s/iperf.%d.json" % (tmp, i)) as f:
            j = json.load(f)
        end = float(open("%s/iperf.%d.end" % (tmp, i)).read())
    except Exception:
        print("fail: client %d: no report" % i)
        sys.exit()
    if "error" in j:
        print("fail: " + j["error"])
        sys.exit()
    r = j["end"]["sum_received"]
    if k == 1:
        print("%.6f" % (r["bits_per_second"] / 1e9))
        sys.exit()
    total += r["bytes"]
    starts.append(end - r["seconds"])
    ends.append(end)
print("%.6f" % (total * 8 / (max(ends) - min(starts)) / 1e9))
PY
}

# haul bench; prints "Gbit/s connections peak rss_mib seconds" or "fail:
# why"; connections is what the client used as the sending ended, peak the
# most it had at once (the same as connections for a build without -P
# auto), seconds the time its rate covers: haul bench counts what was
# acknowledged within -t seconds, as iperf3 counts what arrived.
haul_bench() { # port secs conns [client args...]
  local port=$1 secs=$2 conns=$3 rc=0
  shift 3
  in_a timeout --foreground -k 5 $((secs * 3 + 120)) /usr/bin/time -f '%M' -o "$tmp/rss" \
    "$build/haul" bench "$@" -P "$conns" -t "$secs" --json "haul://$addr:$port" \
    >"$tmp/bench.json" 2>"$tmp/bench.err" || rc=$?
  if ((rc)); then
    echo "fail: exit $rc: $(grep -v '^Command exited' "$tmp/bench.err" | tail -n 1)"
    return
  fi
  python3 - "$tmp/bench.json" "$tmp/rss" <<'PY'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rss = open(sys.argv[2]).read().split()[-1]
gbit = j["bytes"] * 8 / j["seconds"] / 1e9 if j["seconds"] > 0 else 0
conns = j.get("connections", "?")
print("%.6f %s %s %d %.1f" % (gbit, conns, j.get("connections_peak", conns), int(rss) // 1024,
                            j["seconds"]))
PY
}

# The pushes; each prints "seconds check" or "fail: why".
push_haul() { # file dir
  local rc=0 t0 t1 size
  size=$(stat -c %s "$1")
  t0=$(now)
  in_a timeout --foreground -k 5 "$push_limit" /usr/bin/time -f '%M' -o "$tmp/rss" \
    "$build/haul" push --plaintext --json "$2" "haul://$addr:$plain_port/wan" \
    >"$tmp/push.json" 2>"$tmp/push.err" || rc=$?
  t1=$(now)
  ((rc == 0)) || { echo "fail: exit $rc: $(tail -n 1 "$tmp/push.err")"; return; }
  rc=0
  in_a timeout 600 "$build/haul" verify --plaintext --json "haul://$addr:$plain_port/wan" \
    >"$tmp/verify.json" 2>>"$tmp/push.err" || rc=$?
  python3 - "$tmp/push.json" "$tmp/verify.json" "$size" "$t0" "$t1" "$rc" <<'PY'
import json, sys
push = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
size, secs, rc = int(sys.argv[3]), float(sys.argv[5]) - float(sys.argv[4]), int(sys.argv[6])
try:
    ver = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
except Exception:
    ver = {}
conns = push.get("connections")
if conns and push.get("connections_peak", conns) != conns:
    conns = "%s,peak:%s" % (conns, push["connections_peak"])
if push.get("bytes") != size or push.get("files") != 1:
    print("fail: pushed %s bytes in %s files, not %d in 1" % (push.get("bytes"), push.get("files"), size))
elif rc or not ver.get("ok") or ver.get("bytes") != size:
    print("fail: haul verify: exit %d, %s bytes checked" % (rc, ver.get("bytes")))
else:
    print("%.3f verify:ok%s" % (secs, ",chose:%s" % conns if conns else ""))
PY
}
push_socat() { # file
  local l t0 t1 rc=0 lrc=0
  rm -f "$tmp/dst/big.bin"
  start_b "$tmp/socat.log" socat -u TCP-LISTEN:6000,reuseaddr CREATE:"$tmp/dst/big.bin"
  l=${pids[-1]}
  wait_port 6000 "$l" || { echo "fail: the socat listener did not start"; return; }
  t0=$(now)
  in_a timeout --foreground -k 5 "$push_limit" socat -u FILE:"$1" TCP:"$addr":6000 2>>"$tmp/socat.log" || rc=$?
  wait "$l" || lrc=$?
  t1=$(now)
  ((rc)) || rc=$lrc
  stop_pid "$l"
  push_check "$1" "$t0" "$t1" "$rc" "$tmp/socat.log"
}
push_rsync() { # file
  local t0 t1 rc=0
  rm -f "$tmp/dst/big.bin"
  t0=$(now)
  in_a timeout --foreground -k 5 "$push_limit" rsync "$1" "rsync://$addr/bench/" 2>>"$tmp/rsync.log" || rc=$?
  t1=$(now)
  push_check "$1" "$t0" "$t1" "$rc" "$tmp/rsync.log"
}
push_scp() { # file
  local t0 t1 rc=0
  rm -f "$tmp/dst/big.bin"
  t0=$(now)
  in_a timeout --foreground -k 5 "$push_limit" scp -q "${ssh_opts[@]}" "$1" "root@$addr:$tmp/dst/big.bin" \
    2>>"$tmp/ssh/scp.log" || rc=$?
  t1=$(now)
  push_check "$1" "$t0" "$t1" "$rc" "$tmp/ssh/scp.log"
}
push_check() { # file t0 t1 rc log
  if (($4)); then
    echo "fail: exit $4: $(tail -n 1 "$5")"
  elif cmp -s "$1" "$tmp/dst/big.bin"; then
    echo "$(calc %.3f "$3 - $2") cmp:ok"
  else
    echo "fail: the copy differs from the file (cmp)"
  fi
}

# The daemons of side B that live as long as the profile.
start_servers() { # max_n
  local i k
  k=$((($1 + iperf_max - 1) / iperf_max))
  iperf_pids=()
  for ((i = 0; i < k; i++)); do start_iperf_server "$i"; done
  rm -rf "$tmp/store-plain" "$tmp/store-tls" "$tmp/dst"
  mkdir -p "$tmp/store-plain" "$tmp/store-tls" "$tmp/dst"
  start_hauld plain
  start_hauld tls
  if [[ " $pushers " == *" rsync "* ]]; then
    start_b "$tmp/rsync.log" rsync --daemon --no-detach --address "$addr" --port 873 \
      --config "$tmp/rsyncd.conf"
    wait_port 873 "${pids[-1]}" || die "rsync --daemon did not start ($tmp/rsync.log)"
  fi
  if [[ " $pushers " == *" scp "* ]]; then
    start_b "$tmp/ssh/sshd.log" /usr/sbin/sshd -D -e -f "$tmp/ssh/sshd_config"
    wait_port 22 "${pids[-1]}" || die "sshd did not start: $(tail -n 3 "$tmp/ssh/sshd.log")"
  fi
}
start_iperf_server() { # index
  start_b "$tmp/iperf3.log" iperf3 -s -p $((iperf_base + $1))
  iperf_pids[$1]=${pids[-1]}
  wait_port $((iperf_base + $1)) "${iperf_pids[$1]}" || die "iperf3 -s did not start ($tmp/iperf3.log)"
}
# On a shared machine something outside the run may end a server (a broad
# pkill): before each row the servers it needs are checked, and started
# again when gone, which the notes under the table tell.
check_iperf_servers() { # row
  local i st
  for i in "${!iperf_pids[@]}"; do
    [[ $(cat "/proc/${iperf_pids[$i]}/comm" 2>/dev/null) == iperf3 ]] && continue
    st=0
    wait "${iperf_pids[$i]}" 2>/dev/null || st=$?
    notes+=("iperf3 -s -p $((iperf_base + i)) (PID ${iperf_pids[$i]}) had gone, exit status $st, before $1: started again")
    say "  iperf3 -s -p $((iperf_base + i)) had gone (exit status $st): starting it again"
    start_iperf_server "$i"
  done
}
# hauld in side B, plaintext or over mutual TLS; its PID goes to
# hauld_plain or hauld_tls.
start_hauld() { # plain|tls
  local log=$tmp/hauld-$1.log port=$plain_port sec=(--plaintext) pid
  if [[ $1 == tls ]]; then
    port=$tls_port
    sec=(--tls-cert "$pki/server.crt" --tls-key "$pki/server.key" --tls-ca "$pki/ca.crt")
  fi
  start_b "$log" "$build/hauld" --listen "$addr:$port" --store "$tmp/store-$1" "${sec[@]}" \
    --log-level warn ${HAULD_ARGS:-}
  pid=${pids[-1]}
  wait_port "$port" "$pid" || die "hauld ($1) did not start: $(tail -n 3 "$log")"
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == hauld ]] || die "PID $pid is not hauld's"
  printf -v "hauld_$1" %s "$pid"
}
# The same for hauld.
check_hauld() { # plain|tls row
  local var=hauld_$1 st=0
  local pid=${!var}
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == hauld ]] && return 0
  wait "$pid" 2>/dev/null || st=$?
  notes+=("hauld ($1, PID $pid) had gone, exit status $st, before $2: started again")
  say "  hauld ($1) had gone (exit status $st): starting it again"
  start_hauld "$1"
}
stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# ---- what every profile shares ----------------------------------------------
plain_port=7900
tls_port=7901
pki=$tmp/pki
{
  "$build/haul" cert ca "$pki"
  "$build/haul" cert server "$pki" server --ip "$addr"
  "$build/haul" cert client "$pki" bench
} >/dev/null
tls_client=(--tls-cert "$pki/bench.crt" --tls-key "$pki/bench.key" --tls-ca "$pki/ca.crt")

cat >"$tmp/rsyncd.conf" <<EOF
use chroot = no
uid = root
gid = root
[bench]
path = $tmp/dst
read only = no
EOF

# A private sshd: host key, client key and known_hosts of the run's own,
# nothing of the machine's ssh setup used or changed.
mkdir -p "$tmp/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/ssh/host"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/ssh/client"
cp "$tmp/ssh/client.pub" "$tmp/ssh/authorized_keys"
echo "$addr $(cat "$tmp/ssh/host.pub")" >"$tmp/ssh/known_hosts"
cat >"$tmp/ssh/sshd_config" <<EOF
ListenAddress $addr
Port 22
HostKey $tmp/ssh/host
AuthorizedKeysFile $tmp/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp internal-sftp
EOF
ssh_opts=(-F /dev/null -i "$tmp/ssh/client" -o IdentitiesOnly=yes -o BatchMode=yes
  -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$tmp/ssh/known_hosts"
  -o GlobalKnownHostsFile=/dev/null)
[[ -d /run/sshd ]] || { mkdir -p /run/sshd && made_run_sshd=1; }

# The pushed files: random (nothing to compress), one per size.
make_file() { # bytes -> dir holding big.bin
  local d=$tmp/src-$1
  if [[ ! -f $d/big.bin ]]; then
    mkdir -p "$d"
    say "making a random file of $(($1 >> 20)) MiB"
    # AES-CTR of zeros under a random key: as incompressible as
    # /dev/urandom, many times faster on a loaded machine.
    openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass "pass:$RANDOM$RANDOM$RANDOM" </dev/zero 2>/dev/null |
      head -c "$1" >"$d/big.bin" || true
    (($(stat -c %s "$d/big.bin") == $1)) || die "could not make a file of $1 bytes in $d"
  fi
  echo "$d"
}
human_size() { # bytes
  if (($1 >= 1 << 30 && $1 % (1 << 30) == 0)); then echo "$(($1 >> 30)) GiB"; else echo "$(($1 >> 20)) MiB"; fi
}

# ---- the header ----------------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
# The commit haul was built from: the build directory's source tree.
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
if commit=$(git -C "${src:-$repo}" rev-parse --short HEAD 2>/dev/null); then
  git -C "${src:-$repo}" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
else
  commit="from ${src:-an unknown source tree} (not a git tree)"
fi
wmem=$(sysctl -n net.ipv4.tcp_wmem | awk '{print $3}')
rmem=$(sysctl -n net.ipv4.tcp_rmem | awk '{print $3}')
emit "# haul across emulated long links (bench/wan.sh)"
emit ""
emit "- command: \`$command_line\`, $(date -u '+%Y-%m-%d %H:%M UTC')"
emit "- machine: $(nproc) cores ($cpu), Linux $(uname -r), load average at start $(cut -d' ' -f1-3 /proc/loadavg)"
emit "- haul $commit, built in $build; -P auto: $( ((auto)) && echo "accepted, row included" || echo "not accepted by this build, row left out")"
if [[ -n $tcp_buf ]]; then
  emit "- TCP buffers raised in both namespaces to $tcp_buf (TCP_BUF, wanem-up --tcp-buf): tuned hosts"
else
  emit "- TCP buffers: the host's defaults, untuned (tcp_wmem max $((wmem >> 20)) MiB, tcp_rmem max $((rmem >> 20)) MiB): haul has to fill the link without tuning"
fi
emit "- link: wanem (userspace, $wanem_dir) between namespaces A (senders) and B (servers), --rt-prio 10, queue $queue per direction, congestion control $(sysctl -n net.ipv4.tcp_congestion_control)"
emit "- iperf3 -P N above $iperf_max: ceil(N/$iperf_max) iperf3 clients at once, each against its own server, streams split evenly; the bytes their servers received, over the time from the first client's start to the last one's end (they do not start together)"
emit "- memory rows: iperf3 \`-c B -P N -t S -i 0 -J\` (received rate) beside \`haul bench --plaintext -P N -t S --json haul://B:$plain_port\` (bytes acknowledged within the S seconds / S), no warm-up omitted by either"
emit "- pushes: wall clock of the whole command to a fresh destination; haul push --plaintext DIR haul://B:$plain_port/wan then haul verify; socat -u FILE:F TCP:B:6000 into socat -u TCP-LISTEN:6000 CREATE:F; rsync F rsync://B/bench/ (rsync --daemon); scp -q F root@B:F (sshd of the run's own, OpenSSH defaults); each but haul checked with cmp"
emit "- drop_queue: packets the bottleneck queue dropped (TCP's congestion signal); kernel_drop: packets the emulator was too slow to read: a row with kernel_drop > 0 measured the emulator, not the transport (marked (!))"
emit "- RSS: peak resident memory of the haul client (GNU time) and of hauld during the row (VmHWM after clear_refs)"
emit ""

# ---- one profile -----------------------------------------------------------------
run_profile() { # id
  local id=$1 rtt rate rate_bps loss mtu secs label unit div
  read -r rtt rate rate_bps loss mtu secs < <(profile "$id")
  # haul bench counts whole messages acknowledged within the seconds: on
  # a slow link a 1 MiB message is most of a second, so smaller ones.
  local msg=()
  ((rate_bps < 100000000)) && msg=(--message-size 64K)
  [[ -n $seconds_knob ]] && secs=$seconds_knob
  if ((rate_bps >= 1000000000)); then unit=Gbit/s div=1e9; else unit=Mbit/s div=1e6; fi
  label="${rtt%ms} ms RTT, $(calc %g "$rate_bps / $div") $unit, MTU $mtu"
  [[ $loss == 0 ]] || label="$label, $loss loss each way"
  # The file: SIZE, at most about 30 s of line rate.
  local psize=$size_bytes cap=$((rate_bps * 32 / 8 >> 20 << 20))
  ((psize <= cap)) || psize=$cap
  # A push gets ten times its line-rate time and two minutes.
  push_limit=$((psize * 80 / rate_bps + 120))
  emulator_bound=0

  say "profile $id: $label"
  local up=(--rtt "$rtt" --rate "$rate" --loss "$loss" --mtu "$mtu" --queue "$queue" --rt-prio 10
    --addr-a "$addr_a" --addr-b "$addr")
  [[ $loss != 0 ]] && up+=(--seed 1)
  [[ -n $tcp_buf ]] && up+=(--tcp-buf "$tcp_buf")
  "$wanem_dir/wanem-up" "$name" "${up[@]}" >"$tmp/wanem-up.log" 2>&1 ||
    die "wanem-up failed: $(tail -n 3 "$tmp/wanem-up.log")"
  if [[ -n $cc && -z $allowed_cc ]]; then
    # A namespace may choose only among the host's allowed algorithms;
    # the host's list is put back on exit.
    allowed_cc=$(sysctl -n net.ipv4.tcp_allowed_congestion_control)
    [[ " $allowed_cc " == *" $cc "* ]] ||
      sysctl -qw net.ipv4.tcp_allowed_congestion_control="$allowed_cc $cc" || true
  fi
  if [[ -n $cc ]]; then
    in_a sysctl -qw net.ipv4.tcp_congestion_control="$cc" &&
      in_b sysctl -qw net.ipv4.tcp_congestion_control="$cc" ||
      die "CC: the namespaces do not take '$cc' (they have: $(in_a sysctl -n net.ipv4.tcp_available_congestion_control))"
  fi
  local state=/run/wanem
  [[ -f $state/$name.pid ]] || state=/tmp/wanem
  wan_pid=$(cat "$state/$name.pid")
  wan_log=$state/$name.log
  local maxn=1
  for n in $ns_list; do if ((n > maxn)); then maxn=$n; fi; done
  start_servers "$maxn"

  emit "## $label"
  emit ""
  emit "\`wanem-up NAME ${up[*]}\`; $secs s per memory row; $(in_a sysctl -n net.ipv4.tcp_congestion_control) in the namespaces"
  emit ""
  emit "| memory to memory | iperf3 $unit | haul $unit | haul/iperf3 | drop_queue iperf3/haul | kernel_drop iperf3/haul | RSS haul/hauld MiB |"
  emit "|---|---:|---:|---:|---:|---:|---:|"
  local n ip hb hs ist hst ratio best=0 bestn='' plain8='' notes=()
  for n in $ns_list; do
    say "  iperf3 -P $n"
    check_iperf_servers "iperf3 -P $n"
    row_stats_begin
    ip=$(iperf_run "$n" "$secs")
    row_stats_end
    ist="$rdq $rkd"
    say "  haul bench -P $n"
    check_hauld plain "haul bench -P $n"
    hauld_peak_reset "$hauld_plain"
    row_stats_begin
    hb=$(haul_bench "$plain_port" "$secs" "$n" --plaintext "${msg[@]}")
    row_stats_end
    hst="$rdq $rkd"
    local hrss
    hrss=$(hauld_peak "$hauld_plain")
    local ipv=- hbv=- rss=-
    if [[ $ip == fail* ]]; then
      notes+=("failed: iperf3 -P $n: ${ip#fail: }")
    else
      ipv=$(calc %.3f "$ip * 1e9 / $div")
    fi
    if [[ $hb == fail* ]]; then
      notes+=("failed: haul bench -P $n: ${hb#fail: }")
    else
      read -r hb _ _ rss hs <<<"$hb"
      hbv=$(haul_cell "$hb" "$hs")
      [[ $n == 8 ]] && plain8=$hb
      if awk -v a="$hb" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=$hb bestn=$n; fi
    fi
    ratio=-
    [[ $ipv != - && $hbv != - ]] && ratio=$(calc %.2fx "$hb / $ip")
    emit "| -P $n | $ipv | $hbv | $ratio | ${ist% *} / ${hst% *} | $(flag "${ist#* }") / $(flag "${hst#* }") | $rss / $hrss |"
    say "    iperf3 $ipv, haul $hbv $unit"
  done
  if ((auto)); then
    say "  haul bench -P auto"
    check_hauld plain "haul bench -P auto"
    hauld_peak_reset "$hauld_plain"
    row_stats_begin
    hb=$(haul_bench "$plain_port" "$secs" auto --plaintext "${msg[@]}")
    row_stats_end
    hst="$rdq $rkd"
    hrss=$(hauld_peak "$hauld_plain")
    if [[ $hb == fail* ]]; then
      notes+=("failed: haul bench -P auto: ${hb#fail: }")
      emit "| haul -P auto | | failed | | | | |"
    else
      local chose peak
      read -r hb chose peak rss hs <<<"$hb"
      ratio=-
      [[ -n $bestn ]] && ratio="$(calc %.2fx "$hb / $best") of the best fixed (-P $bestn)"
      emit "| haul -P auto (ended with $chose, at most $peak) | | $(haul_cell "$hb" "$hs") | $ratio | ${hst% *} | $(flag "${hst#* }") | $rss / $hrss |"
    fi
  fi
  if [[ -z $plain8 ]]; then
    say "  haul bench -P 8 (plaintext, for the TLS row)"
    check_hauld plain "haul bench -P 8"
    hb=$(haul_bench "$plain_port" "$secs" 8 --plaintext "${msg[@]}")
    if [[ $hb == fail* ]]; then notes+=("failed: haul bench -P 8: ${hb#fail: }"); else
      plain8=${hb%% *}
      emit "| haul -P 8 | | $(calc %.3f "$plain8 * 1e9 / $div") | | | | |"
    fi
  fi
  say "  haul bench -P 8 over TLS"
  check_hauld tls "haul bench -P 8 over TLS"
  hauld_peak_reset "$hauld_tls"
  row_stats_begin
  hb=$(haul_bench "$tls_port" "$secs" 8 "${tls_client[@]}" "${msg[@]}")
  row_stats_end
  hst="$rdq $rkd"
  hrss=$(hauld_peak "$hauld_tls")
  if [[ $hb == fail* ]]; then
    notes+=("failed: haul bench -P 8 over TLS: ${hb#fail: }")
    emit "| haul -P 8, TLS 1.3 | | failed | | | | |"
  else
    read -r hb _ _ rss hs <<<"$hb"
    ratio=-
    [[ -n $plain8 ]] && ratio="$(calc %.2fx "$hb / $plain8") of plaintext -P 8"
    emit "| haul -P 8, TLS 1.3 | | $(haul_cell "$hb" "$hs") | $ratio | ${hst% *} | $(flag "${hst#* }") | $rss / $hrss |"
  fi
  emit ""

  if [[ -n $pushers ]]; then
    local dir file
    dir=$(make_file "$psize")
    file=$dir/big.bin
    local what
    what="push of $(human_size "$psize")"
    ((psize < size_bytes)) && what="$what (scaled to ~$((psize * 8 / rate_bps)) s of line rate)"
    emit "| $what, random | $unit | of line rate | check | drop_queue | kernel_drop |"
    emit "|---|---:|---:|---|---:|---:|"
    local p res secs_taken check st label_p
    for p in $pushers; do
      say "  push: $p"
      row_stats_begin
      case $p in
      haul)
        check_hauld plain "haul push"
        res=$(push_haul "$file" "$dir")
        ;;
      socat) res=$(push_socat "$file") ;;
      rsync) res=$(push_rsync "$file") ;;
      scp) res=$(push_scp "$file") ;;
      esac
      row_stats_end
      st="$rdq $rkd"
      label_p=$p
      case $p in
      haul) label_p="haul push (default -P ${push_default:-?})" ;;
      rsync) label_p="rsync (daemon)" ;;
      scp) label_p="scp (OpenSSH defaults)" ;;
      esac
      if [[ $res == fail* ]]; then
        notes+=("failed: $p push: ${res#fail: }")
        emit "| $label_p | failed | | ${res#fail: } | ${st% *} | $(flag "${st#* }") |"
      else
        read -r secs_taken check <<<"$res"
        if [[ $check == *chose:* ]]; then
          label_p="haul push (default -P ${push_default:-?}: ended with ${check##*chose:})"
          label_p=${label_p/,peak:/, at most }
          check=${check%%,chose:*}
        fi
        emit "| $label_p | $(calc %.3f "$psize * 8 / $secs_taken / $div") | $(calc %.0f%% "$psize * 8 / $secs_taken / $rate_bps * 100") | $check | ${st% *} | $(flag "${st#* }") |"
      fi
      say "    $res"
      rm -f "$tmp/dst/big.bin"
    done
    emit ""
  fi
  ((emulator_bound)) && emit "(!) kernel_drop > 0: the emulator could not keep up in these rows; they measured it, not the transport."
  local note
  for note in "${notes[@]}"; do emit "- $note"; done
  local errs
  errs=$(grep -ahiE 'error|warn|refus|fail' "$tmp/hauld-plain.log" "$tmp/hauld-tls.log" 2>/dev/null | grep -v 'listening on' | sed 's/^[0-9T:.-]*Z //' | sort | uniq -c | sort -rn | head -n 5 || true)
  if [[ -n $errs ]]; then
    emit "- hauld said (count, line):"
    while IFS= read -r line; do emit "  - \`${line#"${line%%[![:space:]]*}"}\`"; done <<<"$errs"
  fi
  emit ""
  : >"$tmp/hauld-plain.log"
  : >"$tmp/hauld-tls.log"
  stop_servers
  "$wanem_dir/wanem-down" --kill "$name" >/dev/null 2>&1 || true
}
flag() { (($1 > 0)) && echo "$1 (!)" || echo "$1"; }
# haul's rate in the profile's unit, and its time to the last
# acknowledgement when that is well past the row's seconds.
haul_cell() { # gbit seconds
  local v
  v=$(calc %.3f "$1 * 1e9 / $div")
  if awk -v t="$2" -v s="$secs" 'BEGIN { exit !(t > 1.2 * s) }'; then v="$v (over $(calc %.0f "$2") s)"; fi
  echo "$v"
}

start=$(now)
for id in $profiles; do run_profile "$id"; done
emit "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); the run took $(calc %.0f "($(now) - $start) / 60") min."
[[ -z $out ]] || cp "$report" "$out"
