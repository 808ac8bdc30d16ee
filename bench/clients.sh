#!/usr/bin/env bash
# bench/clients.sh - one hauld serving many clients at once, beside an rsync
# daemon serving the same clients, in the same run, on loopback:
#
#   (a) N concurrent `haul push` (N in NS, default "100 500 1000"), each of
#       a small tree (FILES files of FILE_KB KiB, generated once) to a
#       dataset of its own, against N concurrent `rsync -a` of the same
#       tree to an rsync daemon;
#   (b) the same N where every LARGE_EVERY-th client pushes a large file
#       (LARGE_MB) beside its small tree;
#   (c) hauld under `taskset -c 0` against `taskset -c 0,1`, CORES_N small
#       pushes (default the largest N): the wall-time ratio says whether
#       hauld's work uses every core, when the clients leave it any;
#   (c2) the same for VERIFIES (4) verifies at once of VSIZE (1G) each,
#       work that is hauld's alone;
#   (d) VERIFY_N (default 100) small pushes alone, then again while
#       `haul verify` of a snapshot of one SIZE file (default 4G) runs:
#       the slowdown ratio says whether a long verify holds up the others.
#
#   bench/clients.sh [BUILD_DIR]
#
# Per row: wall time (from the moment every client is ready to the last
# one's exit), how many succeeded (and the commonest reasons of those that
# failed), hauld's peak RSS (VmHWM) and its RSS after IDLE seconds with no
# client (VmRSS), the CPU hauld spent per client (utime + stime), and the
# same N against the rsync daemon: its wall time, its CPU per client (the
# daemon's and its children's), and haul's speed as a ratio of rsync's.
#
# Knobs (environment): PARTS (which of a b c c2 d to run, default all),
# NS, FILES (50), FILE_KB (4), CONNS (2, haul's -P),
# LARGE_EVERY (20), LARGE_MB (32), CORES_N, VERIFIES (4), VSIZE (1G),
# VERIFY_N (100), SIZE (4G),
# IDLE (5 s), WORK (where the stores go, default /dev/shm), MEMORY and
# WORKERS (hauld's --memory and --workers, passed only when this hauld
# has them), HAULD_ARGS (more hauld options), RSYNC=0 to leave rsync out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=$(realpath "${1:-build}")
ns=${NS:-100 500 1000}
files=${FILES:-50}
file_kb=${FILE_KB:-4}
conns=${CONNS:-2}
large_every=${LARGE_EVERY:-20}
large_mb=${LARGE_MB:-32}
verify_n=${VERIFY_N:-100}
size=${SIZE:-4G}
idle=${IDLE:-5}
with_rsync=${RSYNC:-1}
need=()
for pkg in rsync util-linux procps coreutils iproute2; do
  [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == *" ok installed" ]] || need+=("$pkg")
done
if ((${#need[@]})); then
  if ((EUID == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bench/clients.sh: missing ${need[*]} (apt-get install them)" >&2
    exit 1
  fi
fi
[[ -x $build/haul && -x $build/hauld ]] || { echo "bench/clients.sh: build first (scripts/build)" >&2; exit 1; }

# Every client takes descriptors, and hauld two per client and more.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d "${WORK:-/dev/shm}/haul-clients.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
tck=$(getconf CLK_TCK)

# hauld's options of other versions, passed only when it has them, and
# the caller's own (HAULD_ARGS, e.g. "--max-sessions 500").
read -r -a hauld_opts <<<"${HAULD_ARGS:-}"
hauld_help=$("$build/hauld" --help 2>&1 || true)
if [[ -n ${MEMORY:-} ]]; then
  if grep -q -- '--memory' <<<"$hauld_help"; then hauld_opts+=(--memory "$MEMORY"); else echo "note: this hauld has no --memory; MEMORY ignored"; fi
fi
if [[ -n ${WORKERS:-} ]]; then
  if grep -q -- '--workers' <<<"$hauld_help"; then hauld_opts+=(--workers "$WORKERS"); else echo "note: this hauld has no --workers; WORKERS ignored"; fi
fi

wait_port() {
  for _ in $(seq 1000); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.01
  done
  echo "nothing listens on port $1" >&2
  return 1
}
now() { date +%s.%N; }
mib() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
# utime + stime (+ those of waited-for children with "all") of a process, in ms.
cpu_ms() { # pid [all]
  awk -v t="$tck" -v all="${2:-}" '{
      sub(/^.*\) /, ""); # the fields after the command name, from field 3 (state)
      split($0, f, " ");
      c = f[12] + f[13]; if (all != "") c += f[14] + f[15];
      printf "%.0f", c * 1000 / t }' "/proc/$1/stat"
}
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

parts=" ${PARTS:-a b c c2 d} "
want() { [[ $parts == *" $1 "* ]]; }

# ---- data -------------------------------------------------------------------
avail_kb() { df -Pk "$work" | awk 'NR == 2 {print $4}'; }
size_bytes=$(numfmt --from=iec "$size")
echo "preparing data in $work ..."
mkdir -p "$work/small" "$work/mixed"
for ((i = 0; i < files; i++)); do
  head -c $((file_kb * 1024)) /dev/urandom >"$work/small/f$i"
done
cp -a "$work/small/." "$work/mixed/"
head -c $((large_mb << 20)) /dev/urandom >"$work/mixed/large.bin"
small_kb=$(du -sk "$work/small" | cut -f1)
echo "small tree: $files files of $file_kb KiB; the mix: every ${large_every}th client adds a file of $large_mb MiB"
echo "$(nproc) cores; $(ulimit -n) descriptors; net.core.somaxconn $(cat /proc/sys/net/core/somaxconn)"
echo "hauld ${hauld_opts[*]:-(default options)}; haul push -P $conns --plaintext"

# ---- servers ------------------------------------------------------------------
hauld_pid=
start_hauld() { # [taskset cpus]
  rm -rf "$work/store" && mkdir -p "$work/store"
  local pin=()
  [[ -n ${1:-} ]] && pin=(taskset -c "$1")
  "${pin[@]}" "$build/hauld" --listen "127.0.0.1:$port" --store "$work/store" --plaintext \
    "${hauld_opts[@]}" >"$work/hauld.log" 2>&1 &
  hauld_pid=$!
  pids+=("$hauld_pid")
  wait_port "$port"
}
forget() { # pid: no longer ours to kill at exit
  local kept=()
  for p in "${pids[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
  pids=("${kept[@]}")
}
stop_hauld() {
  kill "$hauld_pid"; wait "$hauld_pid" 2>/dev/null || true
  forget "$hauld_pid"
}
rsyncd_pid=
start_rsyncd() {
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  cat >"$work/rsyncd.conf" <<CONF
use chroot = no
uid = root
gid = root
max connections = 0
[bench]
path = $work/dst
read only = no
CONF
  rsync --daemon --no-detach --port "$port" --config "$work/rsyncd.conf" &
  rsyncd_pid=$!
  pids+=("$rsyncd_pid")
  wait_port "$port"
}
stop_rsyncd() {
  kill "$rsyncd_pid"; wait "$rsyncd_pid" 2>/dev/null || true
  forget "$rsyncd_pid"
}

# ---- a burst of clients -------------------------------------------------------
# Starts n clients that wait on a shared lock, waits until each is ready,
# then releases them at once; echoes the wall time until the last exits.
# The command of client i is `client_cmd i`. Exit statuses go to rc/i,
# stderr to err/i.
burst() { # n
  local n=$1
  rm -rf "$work/ready" "$work/rc" "$work/err" && mkdir -p "$work/ready" "$work/rc" "$work/err"
  exec {lockfd}>"$work/gate"
  flock -x "$lockfd"
  local cl=()
  for ((i = 0; i < n; i++)); do
    (
      exec {lockfd}>&-
      : >"$work/ready/$i"
      flock -s "$work/gate" true
      rc=0
      client_cmd "$i" >/dev/null 2>"$work/err/$i" || rc=$?
      echo "$rc" >"$work/rc/$i"
    ) &
    cl+=($!)
  done
  while (($(ls "$work/ready" | wc -l) < n)); do sleep 0.05; done
  local t0=$(now)
  flock -u "$lockfd"
  exec {lockfd}>&-
  wait "${cl[@]}" 2>/dev/null || true
  awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}'
}
# "all n" or "ok/n ok"; the commonest two reasons of the failures go to
# $work/why (a line below the row).
outcome() { # n [who]
  local ok
  ok=$(grep -lx 0 "$work"/rc/* 2>/dev/null | wc -l)
  if ((ok == $1)); then echo "all $1"; return; fi
  for f in "$work"/rc/*; do
    [[ $(cat "$f") == 0 ]] || tail -n 1 "$work/err/$(basename "$f")"
  done | sed -E 's/127\.0\.0\.1:[0-9]+/ADDR/g' | sort | uniq -c | sort -rn | head -2 |
    awk -v who="${2:-haul}" '{c = $1; $1 = ""; printf "        %s, %d failed:%s\n", who, c, $0}' >>"$work/why"
  echo "$ok/$1 ok"
}
# Prints and forgets the reasons of the failures of the last row.
why() {
  [[ -s $work/why ]] && cat "$work/why"
  rm -f "$work/why"
}

tree_of() { # i mix
  if [[ $2 == mix ]] && ((i % large_every == large_every - 1)); then echo "$work/mixed"; else echo "$work/small"; fi
}
mode=small
haul_client() { "$build/haul" push -q -P "$conns" --plaintext "$(tree_of "$1" "$mode")" "haul://127.0.0.1:$port/d$1"; }
rsync_client() { rsync -a --whole-file "$(tree_of "$1" "$mode")/" "rsync://127.0.0.1:$port/bench/d$1/"; }

# Space for a row: the trees of n clients, twice (haul's store or rsync's
# copy, and a margin).
fits() { # n mode
  local need_kb=$(($1 * small_kb))
  [[ $2 == mix ]] && need_kb=$((need_kb + $1 / large_every * (large_mb << 10)))
  ((2 * need_kb < $(avail_kb)))
}

# One row of (a) or (b): haul, then rsync, for n clients.
row() { # n mode
  local n=$1
  mode=$2
  if ! fits "$n" "$mode"; then
    printf '%6d  SKIPPED: not enough room in %s for %d trees\n' "$n" "${WORK:-/dev/shm}" "$n"
    return
  fi
  start_hauld
  local c0=$(cpu_ms "$hauld_pid")
  client_cmd() { haul_client "$@"; }
  local t=$(burst "$n")
  local res=$(outcome "$n")
  local c1=$(cpu_ms "$hauld_pid")
  local peak=$(status_kb "$hauld_pid" VmHWM)
  sleep "$idle"
  local idle_kb=$(status_kb "$hauld_pid" VmRSS)
  stop_hauld
  local rt=- rcpu=- ratio=- rres=
  if ((with_rsync)); then
    start_rsyncd
    local r0=$(cpu_ms "$rsyncd_pid" all)
    client_cmd() { rsync_client "$@"; }
    local tr=$(burst "$n")
    rres=$(outcome "$n" rsync)
    local r1=$(cpu_ms "$rsyncd_pid" all)
    stop_rsyncd
    if [[ $rres == all* ]]; then rres=; else rres="  (rsync: $rres)"; fi
    rt=$(printf '%.2f s' "$tr")
    rcpu=$(awk -v a="$r0" -v b="$r1" -v n="$n" 'BEGIN {printf "%.1f ms", (b - a) / n}')
    ratio=$(awk -v r="$tr" -v h="$t" 'BEGIN {printf "%.2fx", r / h}')
  fi
  printf '%6d  %8.2f s  %-26s %7s MiB %7s MiB %8.1f ms  %9s %9s  %8s%s\n' "$n" "$t" "$res" \
    "$(mib "$peak")" "$(mib "$idle_kb")" "$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {print (b - a) / n}')" \
    "$rt" "$rcpu" "$ratio" "$rres"
  why
}
header() {
  printf '%6s  %10s  %-26s %11s %11s %11s  %9s %9s  %8s\n' N "haul wall" "haul clients" "hauld peak" \
    "hauld idle" "CPU/client" "rsync" "CPU/cl." "vs rsync"
}

if want a; then
echo
echo "(a) N clients at once, each pushing its small tree ($small_kb KiB)"
header
for n in $ns; do row "$n" small; done
fi

if want b; then
echo
echo "(b) the same, every ${large_every}th client also pushing $large_mb MiB"
header
for n in $ns; do row "$n" mix; done
fi

# ---- (c) one core against two ----------------------------------------------------
if want c; then
cores_n=${CORES_N:-$(tr ' ' '\n' <<<"$ns" | sort -n | tail -1)}
echo
echo "(c) $cores_n small pushes, hauld on 1 core against 2"
mode=small
client_cmd() { haul_client "$@"; }
if (($(nproc) < 2)); then
  echo "SKIPPED: one core only"
else
  start_hauld 0
  t1=$(burst "$cores_n"); r1=$(outcome "$cores_n")
  stop_hauld
  start_hauld 0,1
  t2=$(burst "$cores_n"); r2=$(outcome "$cores_n")
  stop_hauld
  printf 'taskset -c 0    %8.2f s  %s\n' "$t1" "$r1"
  printf 'taskset -c 0,1  %8.2f s  %s\n' "$t2" "$r2"
  why
  echo "2 cores vs 1: $(awk -v a="$t1" -v b="$t2" 'BEGIN {printf "%.2fx", a / b}') faster (goal: 1.6x or more)"
fi
fi

# ---- (c2) hauld's own work on one core against two -----------------------------------
if want c2; then
# In (c) the clients share the two cores with hauld and do most of the
# work, so pinning hauld alone says little. A verify's work is hauld's
# (it re-reads and hashes the snapshot; its client only reads a result),
# so VERIFIES verifies at once of snapshots of VSIZE each measure it.
verifies=${VERIFIES:-4}
vsize_bytes=$(numfmt --from=iec "${VSIZE:-1G}")
echo
echo "(c2) $verifies verifies at once of $(numfmt --to=iec "$vsize_bytes") each, hauld on 1 core against 2"
if (($(nproc) < 2)); then
  echo "SKIPPED: one core only"
elif ((2 * verifies * vsize_bytes + (1 << 30) > $(avail_kb) * 1024)); then
  echo "SKIPPED: $verifies snapshots of $(numfmt --to=iec "$vsize_bytes") do not fit twice in $WORK"
else
  mkdir -p "$work/vbig"
  head -c "$vsize_bytes" /dev/urandom >"$work/vbig/big.bin"
  client_cmd() { "$build/haul" verify -q --plaintext "haul://127.0.0.1:$port/w$1"; }
  for cpus in 0 0,1; do
    start_hauld "$cpus"
    # The same content in each dataset: the store links nothing across
    # datasets, so each verify reads its own copy.
    for ((i = 0; i < verifies; i++)); do
      "$build/haul" push -q -P 2 --plaintext "$work/vbig" "haul://127.0.0.1:$port/w$i" >/dev/null
    done
    c0=$(cpu_ms "$hauld_pid")
    t=$(burst "$verifies"); r=$(outcome "$verifies")
    c1=$(cpu_ms "$hauld_pid")
    stop_hauld
    printf 'taskset -c %-4s %8.2f s  %s  (hauld CPU %.2f s)\n' "$cpus" "$t" "$r" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {print (b - a) / 1000}')"
    if [[ $cpus == 0 ]]; then v1=$t; else v2=$t; fi
  done
  rm -rf "$work/vbig"
  why
  echo "2 cores vs 1: $(awk -v a="$v1" -v b="$v2" 'BEGIN {printf "%.2fx", a / b}') faster (goal: 1.6x or more)"
fi
fi

# ---- (d) a long verify beside small pushes --------------------------------------------
if want d; then
echo
# The file, its copy in the store and a margin of 1 GiB must fit.
room=$(($(avail_kb) * 1024))
if ((2 * size_bytes + (1 << 30) > room)); then
  scaled=$(((room - (1 << 30)) / 2 / (1 << 20) << 20))
  echo "note: $size does not fit twice in $(numfmt --to=iec "$room") free; SIZE scaled down to $(numfmt --to=iec "$scaled")"
  size_bytes=$scaled
fi
echo "(d) $verify_n small pushes, alone and while a verify of $(numfmt --to=iec "$size_bytes") runs"
if ((size_bytes < (64 << 20))); then
  echo "SKIPPED: a snapshot of less than 64 MiB (SIZE, or the room there is) is over too soon"
else
  mkdir -p "$work/big"
  head -c "$size_bytes" /dev/urandom >"$work/big/big.bin"
  start_hauld
  "$build/haul" push -q -P 4 --plaintext "$work/big" "haul://127.0.0.1:$port/big" >/dev/null
  rm -rf "$work/big"
  mode=small
  client_cmd() { haul_client "$@"; }
  ta=$(burst "$verify_n"); ra=$(outcome "$verify_n")
  v0=$(now)
  "$build/haul" verify -q --plaintext "haul://127.0.0.1:$port/big" >"$work/verify.out" 2>&1 &
  vpid=$!
  pids+=("$vpid")
  for _ in $(seq 1000); do grep -q "verify big): accepted" "$work/hauld.log" && break; sleep 0.01; done
  # Datasets of their own again: a push to a dataset is a new snapshot.
  client_cmd() { "$build/haul" push -q -P "$conns" --plaintext "$work/small" "haul://127.0.0.1:$port/v$1"; }
  tb=$(burst "$verify_n"); rb=$(outcome "$verify_n")
  overlap=1
  kill -0 "$vpid" 2>/dev/null || overlap=0
  vrc=0
  wait "$vpid" || vrc=$?
  forget "$vpid"
  tv=$(awk -v a="$v0" -v b="$(now)" 'BEGIN {print b - a}')
  stop_hauld
  printf 'pushes alone          %8.2f s  %s\n' "$ta" "$ra"
  printf 'pushes during verify  %8.2f s  %s\n' "$tb" "$rb"
  why
  printf 'the verify            %8.2f s  %s\n' "$tv" "$([[ $vrc == 0 ]] && echo ok || echo "failed ($vrc): $(tail -1 "$work/verify.out")")"
  echo "slowdown: $(awk -v a="$ta" -v b="$tb" 'BEGIN {printf "%.2fx", b / a}') (goal: 1.5x or less)"
  ((overlap)) || echo "note: the verify ended before the pushes did; a larger SIZE measures more"
fi
fi
