#!/usr/bin/env bash
# bench/store.sh - haul push beside the tools a user would otherwise pick,
# on loopback, in the same run, stores on /dev/shm:
#
#   (a) one large file (SIZE_MB, default 4096): nc, socat -b 1M, rsync
#       (daemon mode), haul push (plain TCP, --plaintext), and the TLS row:
#       haul push over mutual TLS 1.3 beside scp -c aes128-gcm@openssh.com
#       to an sshd of the script's own on 127.0.0.1 (a private port, host
#       and client keys made for the run; needs openssh-server)
#   (b) a tree of many small files (FILES, default 50000, 1-64 KiB):
#       tar | nc | tar, rsync (daemon mode), haul push
#   (c) peak RSS of hauld and haul pushing a tree of MANY files (default
#       1000000, 1-4 KiB); MANY=0 skips it
#
#   bench/store.sh [BUILD_DIR]
#
# Each row is the best of ROUNDS runs (default 2). Times are wall clock of
# the whole transfer, the receiver's writes included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=$(realpath "${1:-build}")
rounds=${ROUNDS:-2}
size_mb=${SIZE_MB:-4096}
files=${FILES:-50000}
many=${MANY:-1000000}
# The peers: installed when missing and we may (root), else a clear error.
need=()
for pkg in netcat-openbsd socat rsync tar openssh-client openssh-server python3 time; do
  [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true) == *" ok installed" ]] || need+=("$pkg")
done
if ((${#need[@]})); then
  if ((EUID == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "bench/store.sh: missing ${need[*]} (apt-get install them)" >&2
    exit 1
  fi
fi
[[ -x $build/haul && -x $build/hauld ]] || { echo "bench/store.sh: build first (scripts/build)" >&2; exit 1; }

work=$(mktemp -d /dev/shm/haul-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port=$((20000 + RANDOM % 20000))

wait_port() {
  for _ in $(seq 500); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.01
  done
  echo "nothing listens on port $1" >&2
  return 1
}
now() { date +%s.%N; }
best=()
record() { # name seconds bytes
  printf '%-28s %8.2f s %9.1f MiB/s\n' "$1" "$2" "$(awk -v b="$3" -v s="$2" 'BEGIN {print b / s / 1048576}')"
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

# ---- the peers ------------------------------------------------------------------
run_nc() { # src file
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  nc -l -p "$port" >"$work/dst/out" & local l=$!
  wait_port "$port"
  local t0=$(now)
  nc -N 127.0.0.1 "$port" <"$1"
  wait $l
  awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}'
}
run_socat() {
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  socat -b 1048576 -u TCP-LISTEN:"$port",reuseaddr CREATE:"$work/dst/out" & local l=$!
  wait_port "$port"
  local t0=$(now)
  socat -b 1048576 -u FILE:"$1" TCP:127.0.0.1:"$port"
  wait $l
  awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}'
}
run_tar_nc() { # src dir
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  (nc -l -p "$port" | tar -x -C "$work/dst") & local l=$!
  wait_port "$port"
  local t0=$(now)
  tar -c -C "$1" . | nc -N 127.0.0.1 "$port"
  wait $l
  awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}'
}
start_rsyncd() {
  mkdir -p "$work/rsync"
  cat >"$work/rsyncd.conf" <<CONF
use chroot = no
uid = root
gid = root
[bench]
path = $work/dst
read only = no
CONF
  rsync --daemon --no-detach --port "$port" --config "$work/rsyncd.conf" & pids+=($!)
  wait_port "$port"
}
run_rsync() { # src (dir/)
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  start_rsyncd
  local t0=$(now)
  rsync -a --whole-file "$1" "rsync://127.0.0.1:$port/bench/"
  local t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}')
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
  echo "$t"
}
# A PKI for the TLS rows, made with haul cert.
pki=$work/pki
"$build/haul" cert ca "$pki" >/dev/null
"$build/haul" cert server "$pki" localhost >/dev/null
"$build/haul" cert client "$pki" bench >/dev/null
tls_server=(--tls-cert "$pki/localhost.crt" --tls-key "$pki/localhost.key" --tls-ca "$pki/ca.crt")
tls_client=(--tls-cert "$pki/bench.crt" --tls-key "$pki/bench.key" --tls-ca "$pki/ca.crt")
start_hauld() { # [tls]
  rm -rf "$work/store" && mkdir -p "$work/store"
  local sec=(--plaintext)
  [[ ${1:-} == tls ]] && sec=("${tls_server[@]}")
  "$build/hauld" --listen "127.0.0.1:$port" --store "$work/store" "${sec[@]}" >"$work/hauld.log" 2>&1 & pids+=($!)
  wait_port "$port"
}
stop_hauld() {
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
}
run_haul() { # src dir, connections, [tls]
  start_hauld "${3:-}"
  local sec=(--plaintext)
  [[ ${3:-} == tls ]] && sec=("${tls_client[@]}")
  local t0=$(now)
  "$build/haul" push -q -P "${2:-4}" "${sec[@]}" "$1" "haul://127.0.0.1:$port/bench" >/dev/null
  local t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}')
  stop_hauld
  echo "$t"
}
bestof() { # command...
  local b=
  for ((r = 0; r < rounds; r++)); do
    local t=$("$@")
    b=$(awk -v a="${b:-1e9}" -v t="$t" 'BEGIN {print (t < a ? t : a)}')
  done
  echo "$b"
}

echo
echo "(a) one file of $((big_bytes >> 20)) MiB, loopback, store on /dev/shm ($(nproc) cores)"
t_nc=$(bestof run_nc "$work/src-big/big.bin"); record "nc" "$t_nc" "$big_bytes"
t_socat=$(bestof run_socat "$work/src-big/big.bin"); record "socat -b 1M" "$t_socat" "$big_bytes"
t_rsync=$(bestof run_rsync "$work/src-big/"); record "rsync (daemon)" "$t_rsync" "$big_bytes"
t_haul=$(bestof run_haul "$work/src-big" 4); record "haul push -P 4" "$t_haul" "$big_bytes"
t_haul1=$(bestof run_haul "$work/src-big" 1); record "haul push -P 1" "$t_haul1" "$big_bytes"
peer=$(printf '%s\n' "$t_nc" "$t_socat" "$t_rsync" | sort -g | head -1)
h=$(printf '%s\n' "$t_haul" "$t_haul1" | sort -g | head -1)
echo "haul vs the best peer: $(awk -v p="$peer" -v h="$h" 'BEGIN {printf "%.2fx", p / h}')"

echo
echo "(a') the same file over TLS"
t_tls=$(bestof run_haul "$work/src-big" 4 tls); record "haul push -P 4, TLS 1.3" "$t_tls" "$big_bytes"
echo "haul TLS vs haul plaintext -P 4: $(awk -v p="$t_haul" -v h="$t_tls" 'BEGIN {printf "%.2fx", p / h}') of its throughput"
# A private sshd: its own host key, a client key made for the run, a port
# of its own; nothing of the machine's ssh setup is used or changed.
start_sshd() {
  local d=$work/ssh
  mkdir -p "$d"
  ssh-keygen -q -t ed25519 -N '' -f "$d/host"
  ssh-keygen -q -t ed25519 -N '' -f "$d/client"
  cp "$d/client.pub" "$d/authorized_keys"
  chmod 600 "$d/authorized_keys"
  sshport=$((port + 11))
  cat >"$d/sshd_config" <<EOF
Port $sshport
ListenAddress 127.0.0.1
HostKey $d/host
AuthorizedKeysFile $d/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile $d/sshd.pid
Ciphers aes128-gcm@openssh.com
Subsystem sftp internal-sftp
EOF
  mkdir -p /run/sshd 2>/dev/null || true
  /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$d/sshd.log" &
  pids+=($!)
  wait_port "$sshport" || return 1
  # One copy to see that it works at all; its error goes to the log.
  head -c 1 /dev/zero >"$d/probe"
  scp -q -P "$sshport" -i "$d/client" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null "$d/probe" "$(id -un)@127.0.0.1:$d/probe.out" 2>>"$d/sshd.log"
}
run_scp() {
  rm -rf "$work/dst" && mkdir -p "$work/dst"
  local t0=$(now)
  scp -q -P "$sshport" -i "$work/ssh/client" -c aes128-gcm@openssh.com -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    "$1" "$(id -un)@127.0.0.1:$work/dst/out"
  awk -v a="$t0" -v b="$(now)" 'BEGIN {print b - a}'
}
if start_sshd; then
  t_scp=$(bestof run_scp "$work/src-big/big.bin"); record "scp aes128-gcm" "$t_scp" "$big_bytes"
  echo "haul TLS vs scp: $(awk -v p="$t_scp" -v h="$t_tls" 'BEGIN {printf "%.2fx", p / h}')"
else
  echo "scp aes128-gcm               SKIPPED: the private sshd did not start ($(tail -1 "$work/ssh/sshd.log"))"
fi

echo
echo "(b) $files files of 1-64 KiB ($((small_bytes >> 20)) MiB)"
t_tar=$(bestof run_tar_nc "$work/src-small"); record "tar | nc | tar" "$t_tar" "$small_bytes"
t_rsync=$(bestof run_rsync "$work/src-small/"); record "rsync (daemon)" "$t_rsync" "$small_bytes"
t_haul=$(bestof run_haul "$work/src-small" 4); record "haul push -P 4" "$t_haul" "$small_bytes"
echo "haul vs tar|nc|tar: $(awk -v p="$t_tar" -v h="$t_haul" 'BEGIN {printf "%.2fx", p / h}');" \
  "vs rsync: $(awk -v p="$t_rsync" -v h="$t_haul" 'BEGIN {printf "%.2fx", p / h}')"

if ((many > 0)); then
  echo
  echo "(c) peak memory for $many files of 1-4 KiB"
  rm -rf "$work/src-big" "$work/src-small" "$work/dst"
  python3 - "$work/src-many" "$many" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
blob = os.urandom(4096)
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%07d" % i), "wb") as f:
        f.write(blob[: 1024 + (i * 7919) % 3072])
PY
  start_hauld
  hpid=${pids[-1]}
  /usr/bin/time -f "%M" -o "$work/haul.rss" "$build/haul" push -q -P 4 --plaintext "$work/src-many" "haul://127.0.0.1:$port/many" >/dev/null
  hauld_kb=$(awk '/VmHWM/ {print $2}' "/proc/$hpid/status")
  stop_hauld
  echo "haul  peak RSS: $(( $(cat "$work/haul.rss") / 1024 )) MiB"
  echo "hauld peak RSS: $((hauld_kb / 1024)) MiB"
fi
