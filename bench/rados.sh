#!/usr/bin/env bash
# bench/rados.sh - hauld on a RADOS pool beside the rados CLI, in the same
# run, on a one-monitor one-OSD cluster of the script's own on 127.0.0.1
# (tests/ceph/cluster.sh; its OSD keeps objects in memory):
#
#   (a) one large file (SIZE_MB, default 1024): `rados --striper put` and
#       `get` of it, then `haul push` and `haul pull` through hauld
#       --store rados:POOL
#   (b) a tree of many small files (FILES, default 50000, 1-64 KiB, the
#       tree of bench/store.sh): `tar | rados --striper put` and
#       `rados --striper get | tar -x` of the same bytes, haul push and
#       pull through hauld on RADOS, and through hauld on the file-system
#       store (/dev/shm), the bar for small files
#
#   bench/rados.sh [BUILD_DIR]
#
# Each row is the best of ROUNDS runs (default 2); the pool is emptied
# between rows. The rados CLI writes with --striper (libradosstriper, 4 MiB
# objects), since one RADOS object may not exceed osd_max_object_size
# (128 MiB). Needs root to install Ceph (or Ceph installed), and memory
# for the OSD: HAUL_CEPH_MEMSTORE_MIB (default here 3 x the data + 1 GiB).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=$(realpath "${1:-build}")
rounds=${ROUNDS:-2}
size_mb=${SIZE_MB:-1024}
files=${FILES:-50000}
connections=${CONNECTIONS:-4}
[[ -x $build/haul && -x $build/hauld ]] || {
  echo "bench/rados.sh: build first (scripts/build)" >&2
  exit 1
}
for pkg in python3 tar; do
  command -v "$pkg" >/dev/null || {
    echo "bench/rados.sh: $pkg is missing" >&2
    exit 1
  }
done

work=$(mktemp -d /dev/shm/haul-rados-bench.XXXXXX)
state=$work/cluster.env
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  tests/ceph/cluster.sh stop "$state" || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {print b - a}'; }
record() { # name seconds bytes
  printf '%-34s %8.2f s %9.1f MiB/s\n' "$1" "$2" "$(awk -v b="$3" -v s="$2" 'BEGIN {print b / s / 1048576}')"
}
wait_port() {
  for _ in $(seq 500); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.01
  done
  echo "nothing listens on port $1" >&2
  return 1
}

# ---- data -------------------------------------------------------------------
echo "preparing data in $work ..."
mkdir -p "$work/src-big" "$work/src-small"
head -c $((size_mb << 20)) /dev/urandom >"$work/src-big/big.bin"
python3 - "$work/src-small" "$files" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
blob = os.urandom(64 << 10)
for i in range(n):
    d = os.path.join(root, "d%03d" % (i % 500))
    if i < 500:
        os.makedirs(d, exist_ok=True)
    size = rnd.randint(1 << 10, 64 << 10)
    with open(os.path.join(d, "f%06d" % i), "wb") as f:
        f.write(blob[:size])
PY
big_bytes=$(stat -c %s "$work/src-big/big.bin")
small_bytes=$(du -sb "$work/src-small" | cut -f1)
echo "big: $((big_bytes >> 20)) MiB; small: $files files, $((small_bytes >> 20)) MiB"

# ---- the cluster ------------------------------------------------------------
data_mib=$(((big_bytes + small_bytes) >> 20))
export HAUL_CEPH_MEMSTORE_MIB=${HAUL_CEPH_MEMSTORE_MIB:-$((3 * data_mib + 1024))}
tests/ceph/cluster.sh start "$state"
# shellcheck disable=SC1090
source "$state"
if [[ -n ${HAUL_CEPH_SKIP:-} ]]; then
  echo "bench/rados.sh: no cluster: $HAUL_CEPH_SKIP" >&2
  exit 1
fi
conf=$HAUL_CEPH_CONF
pool=$HAUL_CEPH_POOL
rados_cli=(rados -c "$conf" -p "$pool")
empty_pool() {
  "${rados_cli[@]}" purge "$pool" --yes-i-really-really-mean-it >/dev/null 2>&1 || true
}

# ---- the rows ---------------------------------------------------------------
run_put() { # file
  empty_pool
  local t0=$(now)
  "${rados_cli[@]}" --striper put bench.obj "$1"
  since "$t0"
}
run_get() { # (after run_put)
  rm -f "$work/out.bin"
  local t0=$(now)
  "${rados_cli[@]}" --striper get bench.obj "$work/out.bin"
  since "$t0"
}
run_tar_put() { # dir
  empty_pool
  local t0=$(now)
  tar -c -C "$1" . | "${rados_cli[@]}" --striper put bench.tar -
  since "$t0"
}
run_tar_get() {
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  local t0=$(now)
  "${rados_cli[@]}" --striper get bench.tar - | tar -x -C "$work/dst"
  since "$t0"
}
start_hauld() { # store spec, [args]
  "$build/hauld" --listen "127.0.0.1:$port" --store "$@" --plaintext >"$work/hauld.log" 2>&1 &
  pids+=($!)
  wait_port "$port"
}
stop_hauld() {
  kill "${pids[-1]}"
  wait "${pids[-1]}" 2>/dev/null || true
  unset 'pids[-1]'
}
# haul push SRC through a new hauld on STORE, then haul pull of it; prints
# "push_seconds pull_seconds".
run_haul() { # src, store spec, [hauld args]
  local src=$1
  shift
  empty_pool
  rm -rf "$work/fs-store" && mkdir -p "$work/fs-store"
  start_hauld "$@"
  local t0=$(now)
  "$build/haul" push -q -P "$connections" --plaintext "$src" "haul://127.0.0.1:$port/bench" >/dev/null
  local t_push=$(since "$t0")
  rm -rf "$work/dst"
  t0=$(now)
  "$build/haul" pull -q -P "$connections" --plaintext "haul://127.0.0.1:$port/bench" "$work/dst" >/dev/null
  local t_pull=$(since "$t0")
  stop_hauld
  echo "$t_push $t_pull"
}
min() { awk -v a="${1:-1e9}" -v b="$2" 'BEGIN {print (b < a ? b : a)}'; }
# Best of ROUNDS of a command that prints one or two times.
bestof() {
  local b1= b2=
  for ((r = 0; r < rounds; r++)); do
    read -r t1 t2 < <("$@")
    b1=$(min "$b1" "$t1")
    [[ -n ${t2:-} ]] && b2=$(min "$b2" "$t2")
  done
  echo "$b1 ${b2:-}"
}
rados_spec=("rados:$pool" --ceph-conf "$conf")

echo
echo "(a) one file of $((big_bytes >> 20)) MiB, loopback, one OSD in memory ($(nproc) cores)"
read -r t_put _ < <(bestof run_put "$work/src-big/big.bin")
record "rados --striper put" "$t_put" "$big_bytes"
t_get=$(run_get)
record "rados --striper get" "$t_get" "$big_bytes"
read -r h_push h_pull < <(bestof run_haul "$work/src-big" "${rados_spec[@]}")
record "haul push -P $connections (rados)" "$h_push" "$big_bytes"
record "haul pull -P $connections (rados)" "$h_pull" "$big_bytes"
cmp -s "$work/src-big/big.bin" "$work/dst/big.bin" || echo "WARNING: the pulled file differs"
echo "haul push vs rados put: $(awk -v p="$t_put" -v h="$h_push" 'BEGIN {printf "%.2fx", p / h}')" \
  "(goal >= 0.80x); pull vs get: $(awk -v p="$t_get" -v h="$h_pull" 'BEGIN {printf "%.2fx", p / h}')"

echo
echo "(b) $files files of 1-64 KiB ($((small_bytes >> 20)) MiB)"
read -r t_put _ < <(bestof run_tar_put "$work/src-small")
record "tar | rados --striper put" "$t_put" "$small_bytes"
t_get=$(run_tar_get)
record "rados --striper get | tar -x" "$t_get" "$small_bytes"
read -r h_push h_pull < <(bestof run_haul "$work/src-small" "${rados_spec[@]}")
record "haul push -P $connections (rados)" "$h_push" "$small_bytes"
record "haul pull -P $connections (rados)" "$h_pull" "$small_bytes"
read -r f_push f_pull < <(bestof run_haul "$work/src-small" "$work/fs-store")
record "haul push -P $connections (fs, /dev/shm)" "$f_push" "$small_bytes"
record "haul pull -P $connections (fs, /dev/shm)" "$f_pull" "$small_bytes"
echo "rados store vs fs store, push: $(awk -v p="$f_push" -v h="$h_push" 'BEGIN {printf "%.2fx", p / h}')" \
  "(goal >= 1.00x); pull: $(awk -v p="$f_pull" -v h="$h_pull" 'BEGIN {printf "%.2fx", p / h}')"
