#!/usr/bin/env bash
# tests/ceph/cluster.sh - a throw-away Ceph cluster for haul's RADOS tests:
# one monitor and one OSD on 127.0.0.1, authentication off, the OSD's
# objects in memory, and one pool for hauld. It is the cluster of the
# tests and of bench/rados.sh, not something to keep data in.
#
#   tests/ceph/cluster.sh start STATE   install what is missing, start a
#                                       cluster, write STATE (below)
#   tests/ceph/cluster.sh stop STATE    stop the daemons by their PIDs and
#                                       remove the cluster's directory
#   tests/ceph/cluster.sh env STATE     print the cluster's variables
#   tests/ceph/cluster.sh osd-stop STATE | osd-cont STATE
#                                       SIGSTOP / SIGCONT the OSD: a server
#                                       that no longer answers, and back
#
# STATE is a file of shell assignments that the RADOS tests read:
#   HAUL_CEPH_DIR=/tmp/haul-ceph.XXXXXX   the cluster's directory
#   HAUL_CEPH_CONF=DIR/ceph.conf          what --ceph-conf takes
#   HAUL_CEPH_POOL=haul                   the pool (rados:haul)
#   HAUL_CEPH_OSD_PID=1234
# or, when Ceph cannot be installed or started here, one line
#   HAUL_CEPH_SKIP='the reason'
# and start exits 0 all the same, so that the tests skip with that reason
# instead of failing. start fails only on a bad command line.
#
# Environment: HAUL_CEPH_STORE=memstore (default) or bluestore (an OSD on
# a 2 GiB file: slower, but not bounded by memory); HAUL_CEPH_MEMSTORE_MIB
# (default 1024), the bound of the in-memory store. A full memstore makes
# writes hang rather than fail, so the tests keep their data small.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|env|osd-stop|osd-cont STATE" >&2
  exit 2
}
(($# == 2)) || usage
action=$1
state=$2
store=${HAUL_CEPH_STORE:-memstore}
memstore_mib=${HAUL_CEPH_MEMSTORE_MIB:-1024}
pool=haul
packages=(ceph-mon ceph-osd ceph-common uuid-runtime)

log() { printf 'cluster.sh %s: %s\n' "$(date +%T)" "$*" >&2; }

# Writes the skip reason as the state and ends start successfully.
skip() {
  log "Ceph is not available: $*"
  printf "HAUL_CEPH_SKIP=%q\n" "$*" >"$state"
  exit 0
}

# Stops every daemon of the cluster in $dir: the OSD first, so that it can
# tell the monitor it leaves, then the monitor; SIGKILL after 10 s.
stop_daemons() {
  local dir=$1 f pid
  for f in "$dir"/run/osd.*.pid "$dir"/run/mon.*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -CONT "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
}

# Reads STATE into the HAUL_CEPH_* variables.
load_state() {
  [[ -r $state ]] || {
    echo "$0: no cluster state in $state" >&2
    exit 1
  }
  # shellcheck disable=SC1090
  source "$state"
}

case $action in
stop)
  [[ -e $state ]] || exit 0
  load_state
  if [[ -n ${HAUL_CEPH_DIR:-} && -d $HAUL_CEPH_DIR ]]; then
    stop_daemons "$HAUL_CEPH_DIR"
    rm -rf "$HAUL_CEPH_DIR"
    log "stopped and removed $HAUL_CEPH_DIR"
  fi
  rm -f "$state"
  exit 0
  ;;
env)
  load_state
  cat "$state"
  exit 0
  ;;
osd-stop | osd-cont)
  load_state
  if [[ $action == osd-stop ]]; then
    kill -STOP "$HAUL_CEPH_OSD_PID"
  else
    kill -CONT "$HAUL_CEPH_OSD_PID"
  fi
  exit 0
  ;;
start) ;;
*) usage ;;
esac

# ---- install ----------------------------------------------------------------
missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ $status == *" ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]})); then
  command -v apt-get >/dev/null || skip "no apt-get to install ${missing[*]}"
  sudo=()
  if ((EUID != 0)); then
    sudo -n true 2>/dev/null || skip "not root and no sudo to install ${missing[*]}"
    sudo=(sudo -n)
  fi
  log "installing ${missing[*]}"
  # The Debian packages start no daemon of their own in a container.
  apt_log=$(mktemp /tmp/haul-ceph-apt.XXXXXX)
  if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
    update -q && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get \
    -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"; } \
    >"$apt_log" 2>&1; then
    tail -5 "$apt_log" >&2
    rm -f "$apt_log"
    skip "apt-get could not install ${missing[*]}"
  fi
  rm -f "$apt_log"
fi

# ---- configure --------------------------------------------------------------
# A cluster left by an earlier run of the same STATE goes first.
if [[ -e $state ]]; then
  "$0" stop "$state"
fi
dir=$(mktemp -d /tmp/haul-ceph.XXXXXX)
mkdir -p "$dir"/{mon.a,osd.0,run,log}
conf=$dir/ceph.conf
started=$SECONDS
fail() {
  log "$*; the last lines of the logs:"
  tail -n 15 "$dir"/log/*.log "$dir"/log/*.out >&2 2>/dev/null || true
  stop_daemons "$dir"
  rm -rf "$dir"
  skip "$*"
}

# A monitor port nothing listens on; the OSD picks its own (6800-7300).
mon_port=
for _ in $(seq 50); do
  candidate=$((20000 + RANDOM % 30000))
  if ! ss -Hltn "sport = :$candidate" 2>/dev/null | grep -q .; then
    mon_port=$candidate
    break
  fi
done
[[ -n $mon_port ]] || fail "no free port for the monitor"

fsid=$(uuidgen)
osd_uuid=$(uuidgen)
cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$mon_port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.ceph.pid
log file = $dir/log/\$name.log
mon cluster log file = $dir/log/\$cluster.\$channel.log
keyring = $dir/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon data avail crit = 1
mon data avail warn = 2
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
[mon]
mon data = $dir/\$name
[osd]
osd data = $dir/\$name
osd objectstore = $store
memstore device bytes = $((memstore_mib << 20))
bluestore block create = true
bluestore block size = 2147483648
bluestore fsck on mount = false
bluestore fsck on mkfs = false
osd memory target = 939524096
CONF

ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null ||
  fail "ceph-authtool failed"
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/monmap" >/dev/null ||
  fail "monmaptool failed"
ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" \
  >"$dir/log/mon-mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"

# The daemons run in the foreground (-f) as children of this script's
# subshells, detached from its output, so that ctest does not wait for
# them; their PIDs are what stop kills.
setsid ceph-mon -c "$conf" -i a -f >"$dir/log/mon.a.out" 2>&1 </dev/null &
echo $! >"$dir/run/mon.a.pid"
up=0
for _ in $(seq 120); do
  if timeout 10 ceph -c "$conf" --connect-timeout 5 mon stat >/dev/null 2>&1; then
    up=1
    break
  fi
  sleep 0.25
done
((up)) || fail "the monitor did not come up within 30 s"

osd_id=$(timeout 30 ceph -c "$conf" osd new "$osd_uuid") || fail "ceph osd new failed"
ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >"$dir/log/osd-mkfs.out" 2>&1 ||
  fail "ceph-osd --mkfs failed"
setsid ceph-osd -c "$conf" -i "$osd_id" -f >"$dir/log/osd.$osd_id.out" 2>&1 </dev/null &
osd_pid=$!
echo "$osd_pid" >"$dir/run/osd.$osd_id.pid"
up=0
for _ in $(seq 240); do
  if timeout 10 ceph -c "$conf" osd dump 2>/dev/null | grep -q "^osd.$osd_id up"; then
    up=1
    break
  fi
  sleep 0.25
done
((up)) || fail "the OSD did not come up within 60 s"

timeout 30 ceph -c "$conf" osd pool create "$pool" 8 8 >/dev/null 2>&1 || fail "the pool was not made"
timeout 30 ceph -c "$conf" osd pool application enable "$pool" haul >/dev/null 2>&1 || true
# A write blocks until the pool's placement groups are active: the first
# one that succeeds says the pool is ready.
up=0
for _ in $(seq 120); do
  if timeout 10 rados -c "$conf" -p "$pool" put haul-ready "$conf" >/dev/null 2>&1; then
    up=1
    break
  fi
  sleep 0.25
done
((up)) || fail "the pool did not become writable within 30 s"
rados -c "$conf" -p "$pool" rm haul-ready >/dev/null 2>&1 || true

{
  printf 'HAUL_CEPH_DIR=%q\n' "$dir"
  printf 'HAUL_CEPH_CONF=%q\n' "$conf"
  printf 'HAUL_CEPH_POOL=%q\n' "$pool"
  printf 'HAUL_CEPH_OSD_PID=%q\n' "$osd_pid"
} >"$state.new"
mv "$state.new" "$state"
log "cluster up in $((SECONDS - started)) s: $conf, pool $pool"
