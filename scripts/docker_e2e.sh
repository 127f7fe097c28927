#!/usr/bin/env bash
# End to end with docker: dockerd's `fuse-overlayfs` storage driver runs the
# program named `fuse-overlayfs` on its PATH (`fuse-overlayfs -o
# lowerdir=...,upperdir=...,workdir=... MERGED`); here that name is a
# symlink to unionfs, first on a private dockerd's PATH. Rootful, then
# rootless (dockerd-rootless.sh under rootlesskit, as an unprivileged user
# with subordinate ids):
#   start dockerd (driver fuse-overlayfs), import a busybox image, run,
#   the container's root served by unionfs (the mount's daemon process is
#   the unionfs binary, its type fuse.unionfs), `docker exec` (its write
#   reaches the upper dir), write and rm, `docker diff` (A/C/D),
#   commit, run the committed image, save (the saved layer carries `.wh.`),
#   load it back and run it, load a 2-layer image whose top layer holds
#   `.wh.NAME` and `.wh..wh..opq` (made with `unionfs commit`), `docker cp`
#   in and out of a stopped container, build with a
#   RUN step, and a cleanup that leaves no mount, no unionfs and no dockerd
#   process behind.
# Every dockerd has its own data-root, exec-root, socket and config below
# one temp dir (never the system's), no bridge, no iptables; containers run
# with --network none. For the rootless run /dev/fuse is made 0666 while
# the script runs (its mode is restored on exit); rootlesskit gets the host
# network (no slirp4netns, no /dev/net/tun) and no port driver. Where
# rootless dockerd cannot start at all, that half is skipped (a failure
# under CI=true). No registry: the image is built here from busybox-static. Each step prints one PASS/FAIL line; the last line is
# `N passed, N failed` and the exit status is non-zero on any failure.
#
# The Debian docker client (/usr/bin/docker) is used, whatever other docker
# is on PATH. Processes are stopped only by the PIDs this script started
# (and those of the unprivileged user, which exists for this run).
#
# Needs root. Installs docker.io, rootlesskit, uidmap, busybox-static and
# fuse3 when missing. No system docker service is started or touched.
#
#   scripts/docker_e2e.sh                 # builds the release binary first
#   UNIONFS_BIN=path scripts/docker_e2e.sh
#   MODES=rootful scripts/docker_e2e.sh   # or MODES=rootless
#   KEEP=1 scripts/docker_e2e.sh          # keep the temp dir (dockerd logs)
#   E2E_USER=name                         # the unprivileged user (default unionfs-e2e)
#   ROOTLESS_NET=slirp4netns ROOTLESS_PORT_DRIVER=builtin   # rootlesskit's network (default host, none)
set -uo pipefail
export LC_ALL=C

cd "$(dirname "$0")/.." || exit 1
START=$(date +%s)
E2E=docker_e2e
CLIENT=docker
# shellcheck source=scripts/e2e_lib.sh
. scripts/e2e_lib.sh
[ "$(id -u)" = 0 ] || cannot_run "needs root"
need dockerd docker.io
[ -x /usr/bin/docker ] || missing+=(docker.io)
[ -x /usr/share/docker.io/contrib/dockerd-rootless.sh ] || missing+=(docker.io)
need runc runc
need rootlesskit rootlesskit
need newuidmap uidmap
need newgidmap uidmap
need fusermount3 fuse3
need setpriv util-linux
need useradd passwd
need usermod passwd
need pgrep procps
need tar tar
[ -x /bin/busybox ] || missing+=(busybox-static)
install_missing
DOCKER=/usr/bin/docker
ROOTLESS_SH=/usr/share/docker.io/contrib/dockerd-rootless.sh
dockerd --version >/dev/null 2>&1 || cannot_run "dockerd --version: $(dockerd --version 2>&1 | tail -n 1)"

build_unionfs
UNIONFS_BIN=$(realpath "$UNIONFS_BIN")
MODES=${MODES:-rootful rootless}
RUSER=${E2E_USER:-unionfs-e2e}

# Short: dockerd's and containerd's sockets live below it.
T=$(mktemp -d /tmp/ude.XXXXXX)
chmod 755 "$T"
# The name dockerd runs: fuse-overlayfs -> the unionfs binary. (If the
# unprivileged user could not reach the binary where it is, it is copied.)
mkdir "$T/bin"
BIN=$UNIONFS_BIN
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$BIN" 2>/dev/null; then
  cp "$UNIONFS_BIN" "$T/unionfs" && chmod 755 "$T/unionfs"
  BIN=$T/unionfs
fi
ln -s "$BIN" "$T/bin/fuse-overlayfs"
KEY_JSON_EXISTED=0
[ -e /etc/docker/key.json ] && KEY_JSON_EXISTED=1

FUSE_MODE=$(stat -c %a /dev/fuse)
CREATED_USER=0
STARTED=() # PIDs of the dockerds (rootless: of rootlesskit) this script started
stop_pid() { # stop_pid PID: TERM, then KILL after 20 s
  local p=$1
  kill -0 "$p" 2>/dev/null || return 0
  kill "$p" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$p" 2>/dev/null
  sleep 0.5
}
stop_user_processes() { # what the unprivileged user still runs (a failure's leftovers)
  if [ "$CREATED_USER" = 1 ] && id -u "$RUSER" >/dev/null 2>&1; then
    local p
    for p in $(pgrep -u "$RUSER"); do kill "$p" 2>/dev/null; done
    for _ in 1 2 3 4 5 6 7 8 9 10; do pgrep -u "$RUSER" >/dev/null || return 0; sleep 0.2; done
    for p in $(pgrep -u "$RUSER"); do kill -9 "$p" 2>/dev/null; done
  fi
  return 0
}
# Processes whose command line names the temp dir: our dockerds,
# containerds, shims and unionfs daemons (nothing else names it).
ours() { pgrep -f "$T/" | grep -v -x "$$"; }
cleanup() {
  set +e
  if [ "${KEEP:-0}" = 1 ]; then
    echo "docker_e2e: kept $T (dockerd logs: $T/MODE/dockerd.log)"
  fi
  local p
  for p in "${STARTED[@]}"; do stop_pid "$p"; done
  stop_user_processes
  # A daemon left by a failure (our binary, our paths on its command line).
  for p in $(ours); do kill "$p" 2>/dev/null; done
  awk '{print $2}' /proc/mounts | grep "^$T/" | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
  [ "${KEEP:-0}" = 1 ] || rm -rf "$T"
  [ "$KEY_JSON_EXISTED" = 1 ] || rm -f /etc/docker/key.json
  chmod "$FUSE_MODE" /dev/fuse
  if [ "$CREATED_USER" = 1 ]; then userdel "$RUSER" 2>/dev/null; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The base image's files: busybox and a few files owned by root.
mkdir -p "$T/rootfs/bin" "$T/rootfs/etc" "$T/rootfs/data" "$T/rootfs/tmp" "$T/rootfs/opq" "$T/rootfs/rep"
chmod 1777 "$T/rootfs/tmp"
cp /bin/busybox "$T/rootfs/bin/"
for a in sh ls cat echo mkdir rm mv stat id sync grep touch sleep; do ln -s busybox "$T/rootfs/bin/$a"; done
echo base >"$T/rootfs/etc/base"
echo gone >"$T/rootfs/etc/gone"
echo data >"$T/rootfs/data/file"
echo a >"$T/rootfs/opq/a"
echo b >"$T/rootfs/opq/b"
echo r >"$T/rootfs/rep/r"
tar -C "$T/rootfs" --owner=0 --group=0 -cf "$T/base.tar" .

MODE=setup
if craft_archive "$UNIONFS_BIN" >"$T/craft.log" 2>&1; then
  members=$(tar -tf "$T/craft/l2.tar" | grep -E '(^|/)\.wh\.' | sed 's|^\./||' | sort | one_line)
  check "unionfs commit wrote the whiteout and the opaque marker" "etc/.wh.gone opq/.wh..wh..opq" "$members"
else
  fail "craft a 2-layer image with unionfs commit" "$(tail -n 3 "$T/craft.log" | one_line)"
fi
chmod -R a+rX "$T/rootfs" "$T/base.tar" "$T/ld.tar" 2>/dev/null

# try NAME CMD...: runs CMD; on failure a FAIL line with its error (the
# last `Error`/`error` line of its stderr), and 1. Its output is in $out.
try() {
  local name=$1 rc
  shift
  out=$("$@" 2>"$T/err")
  rc=$?
  [ $rc = 0 ] && return 0
  local e
  e=$(grep -v '^WARN' "$T/err" | grep -i error | tail -n 1)
  [ -n "$e" ] || e=$(tail -n 2 "$T/err" | one_line)
  [ ${#e} -gt 500 ] && e="${e:0:150} ... ${e: -300}"
  fail "$name" "${e:-$(tail -n 1 <<<"$out")} (exit $rc)"
  return 1
}

DPID= # the dockerd process of the current mode (rootless: inside rootlesskit)
# start_dockerd MODE: a private dockerd, driver fuse-overlayfs; $T/MODE/dk is
# its client.
start_dockerd() {
  local mode=$1 d=$T/$1
  mkdir -p "$d/data" "$d/x" "$d/home" "$d/xdg" "$d/cfg"
  chmod 700 "$d/xdg"
  echo '{}' >"$d/daemon.json"
  local args=(--data-root "$d/data" --exec-root "$d/x" --pidfile "$d/dockerd.pid"
    -H "unix://$d/d.sock" --config-file "$d/daemon.json"
    --storage-driver fuse-overlayfs --bridge=none --iptables=false --ip-masq=false
    --userland-proxy=false --exec-opt native.cgroupdriver=cgroupfs --log-level info)
  local path=$T/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  if [ "$mode" = rootful ]; then
    env -i PATH="$path" HOME="$d/home" dockerd "${args[@]}" >"$d/dockerd.log" 2>&1 &
    STARTED+=($!)
  else
    local uid gid
    uid=$(id -u "$RUSER") gid=$(id -g "$RUSER")
    chown -R "$uid:$gid" "$d"
    # No network at all: rootlesskit's host network, no port driver
    # (slirp4netns would need /dev/net/tun).
    (cd / && exec setpriv --reuid="$uid" --regid="$gid" --init-groups env -i \
      HOME="$d/home" USER="$RUSER" LOGNAME="$RUSER" XDG_RUNTIME_DIR="$d/xdg" PATH="$path" \
      DOCKERD_ROOTLESS_ROOTLESSKIT_NET="${ROOTLESS_NET:-host}" \
      DOCKERD_ROOTLESS_ROOTLESSKIT_PORT_DRIVER="${ROOTLESS_PORT_DRIVER:-none}" \
      DOCKERD_ROOTLESS_ROOTLESSKIT_FLAGS="--state-dir=$d/rk" \
      "$ROOTLESS_SH" "${args[@]}") >"$d/dockerd.log" 2>&1 &
    STARTED+=($!)
  fi
  cat >"$d/dk" <<EOF
#!/bin/sh
DOCKER_HOST=unix://$d/d.sock DOCKER_CONFIG=$d/cfg DOCKER_BUILDKIT=0 exec $DOCKER "\$@"
EOF
  chmod 755 "$d/dk"
  for _ in $(seq 150); do
    "$d/dk" version >/dev/null 2>&1 && break
    kill -0 "${STARTED[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  DPID=$(cat "$d/dockerd.pid" 2>/dev/null)
  "$d/dk" version >/dev/null 2>&1
}

# serves_check NAME: a running container's root is a FUSE mount of type
# fuse.unionfs (fuse-overlayfs's are fuse.fuse-overlayfs) whose daemon
# process (found by its command line) runs the unionfs binary.
serves_check() {
  local name=$1 dk=$T/$MODE/dk
  if ! try "$name" "$dk" run -d --name ve2e "${RUNOPTS[@]}" localhost/e2e:1 sleep 60; then return; fi
  local merged fstype exes p e
  merged=$("$dk" inspect -f '{{.GraphDriver.Data.MergedDir}}' ve2e 2>&1)
  # (rootless: the mount lives in dockerd's mount namespace)
  fstype=$(awk -v m="$merged" '$2 == m {print $3}' "/proc/$DPID/mounts" 2>/dev/null | one_line)
  exes=''
  for p in $(pgrep -f -- "-o lowerdir=.* $merged\$"); do
    e=$(readlink "/proc/$p/exe" 2>/dev/null)
    exes+="$( [ "$e" = "$UNIONFS_BIN" ] || [ "$e" = "$BIN" ] && echo unionfs || echo "$e") "
  done
  check "$name" "fstype fuse.unionfs daemons [unionfs]" \
    "fstype $fstype daemons [$(sort -u <<<"${exes// /$'\n'}" | grep . | one_line)]"
  # docker exec in the running container: the write lands in its upper dir
  local upper
  upper=$("$dk" inspect -f '{{.GraphDriver.Data.UpperDir}}' ve2e 2>&1)
  if try "exec: a write in a running container" "$dk" exec ve2e sh -c 'echo e >/etc/e; cat /etc/e'; then
    check "exec: a write in a running container reaches its upper dir" "e e" \
      "$(one_line <<<"$out") $(cat "$upper/etc/e" 2>&1)"
  fi
  "$dk" rm -f ve2e >/dev/null 2>&1
}

RUNOPTS=(--network none)

run_mode() {
  MODE=$1
  local d=$T/$1 dk=$T/$1/dk
  echo "== $MODE"
  if start_dockerd "$MODE"; then
    check "dockerd up with the fuse-overlayfs storage driver" fuse-overlayfs \
      "$("$dk" info --format '{{.Driver}}' 2>&1)"
  else
    local why
    why=$(grep -v -e '^+' -e 'level=info' -e 'level=warn' "$d/dockerd.log" | tail -n 3 | one_line)
    # Rootless dockerd needs user namespaces, newuidmap and rootlesskit to
    # work on this machine before unionfs plays any part (the driver runs
    # nothing at start): where it cannot start, a skip, failing under CI=true.
    if [ "$MODE" = rootless ] && [ "${CI:-}" != true ]; then
      echo "SKIP [$MODE] dockerd-rootless.sh cannot start here: $why (under CI=true this fails)"
    else
      fail "dockerd up with the fuse-overlayfs storage driver" "$why"
    fi
    return
  fi

  if try "import the busybox image" "$dk" import -c 'CMD ["sh"]' "$T/base.tar" localhost/e2e:1; then
    pass "import the busybox image"
  else
    return
  fi

  # run, write over a lower file
  if try "run" "$dk" run --rm "${RUNOPTS[@]}" localhost/e2e:1 sh -c \
    'cat /etc/base; echo hi >/data/file; cat /data/file; stat -c "%u:%g" /etc/base; grep " / / " /proc/self/mountinfo | grep -c fuse'; then
    check "run: image file read, write over a lower file, owner, FUSE root" \
      "base hi 0:0 1" "$(one_line <<<"$out")"
  fi
  serves_check "the container's root is a FUSE mount served by unionfs"

  # write, rm, diff, commit
  if try "write and rm in a container" "$dk" run --name c2 "${RUNOPTS[@]}" localhost/e2e:1 sh -c \
    'rm /etc/gone; echo new >/etc/new; mkdir /made; echo m >/made/x; rm -r /opq; rm -r /rep; mkdir /rep; echo n >/rep/n'; then
    pass "write and rm in a container"
    try "diff" "$dk" diff c2 &&
      check "diff" "A /etc/new A /made A /made/x A /rep/n C /etc C /rep D /etc/gone D /opq D /rep/r" \
        "$(sort <<<"$out" | one_line)"
    try "commit" "$dk" commit c2 localhost/e2e:2 && pass "commit"
    "$dk" rm c2 >/dev/null 2>&1
  fi
  local expect_committed="base new new m data 1 n"
  local script_committed='ls /etc | grep -v -e hostname -e hosts -e mtab -e resolv; cat /etc/new /made/x /data/file; ls -d /opq 2>&1 | grep -c "No such"; ls /rep'
  if try "run the committed image" "$dk" run --rm "${RUNOPTS[@]}" localhost/e2e:2 sh -c "$script_committed"; then
    check "run the committed image: deletions stay deleted, new files there, the replaced dir holds only the new file" \
      "$expect_committed" "$(one_line <<<"$out")"
  fi

  # save: the top layer carries the whiteouts; load it back. dockerd's
  # fuse-overlayfs driver makes a layer by its naive diff (the mounted
  # layer against the mounted parent, not from the upper dir), so the
  # replaced /rep is a whiteout of its old file, not `.wh..wh..opq`.
  # (fuse-overlayfs 1.10 as the mount program fails here: the diff lacks
  # `D /rep/r`, the layer `rep/.wh.r`, and /rep/r comes back in the
  # committed image.)
  local sv=$d/save.tar
  if try "save" "$dk" save -o "$sv" localhost/e2e:2; then
    pass "save"
    local wh='' m
    for m in $(tar -tf "$sv" | grep '\.tar$'); do
      wh+=$(tar -xOf "$sv" "$m" | tar -t 2>/dev/null | grep -E '(^|/)\.wh\.' | sed 's|^\./||')$'\n'
    done
    check "the saved layer carries .wh. of each deletion (also in the replaced dir)" ".wh.opq etc/.wh.gone rep/.wh.r" "$(grep . <<<"$wh" | sort | one_line)"
    if try "load the saved image" sh -c "$dk rmi localhost/e2e:2 >/dev/null && $dk load -q -i $sv"; then
      pass "load the saved image"
      if try "run the loaded image" "$dk" run --rm "${RUNOPTS[@]}" localhost/e2e:2 sh -c "$script_committed"; then
        check "run the loaded image: same files as the committed one" "$expect_committed" "$(one_line <<<"$out")"
      fi
    fi
  fi

  # load a 2-layer image with .wh. and .wh..wh..opq
  if [ -s "$T/ld.tar" ] && try "load a 2-layer image" "$dk" load -q -i "$T/ld.tar"; then
    pass "load a 2-layer image"
    if try "run the loaded 2-layer image" "$dk" run --rm "${RUNOPTS[@]}" localhost/e2e:ld sh -c \
      'ls /etc | grep -v -e hostname -e hosts -e mtab -e resolv; ls /opq; cat /opq/c'; then
      check "run the loaded 2-layer image: .wh. hides, .wh..wh..opq hides the lower dir" "base c c" "$(one_line <<<"$out")"
    fi
  elif [ ! -s "$T/ld.tar" ]; then
    fail "load a 2-layer image" "the archive could not be made (see setup)"
  fi

  # docker cp into and out of a stopped container (dockerd mounts it)
  echo cp-in >"$d/cp-in"
  if try "create a container for docker cp" "$dk" create --name cpe2e "${RUNOPTS[@]}" localhost/e2e:2 cat /cp-in /etc/new; then
    if try "docker cp into a stopped container" "$dk" cp "$d/cp-in" cpe2e:/cp-in &&
      try "docker cp out of a stopped container" sh -c "$dk cp cpe2e:/made/x - | tar -xO" &&
      check "docker cp out of a stopped container" m "$out" &&
      try "docker cp: the container sees the copied file" "$dk" start -a cpe2e; then
      check "docker cp: the container sees the copied file" "cp-in new" "$(one_line <<<"$out")"
    fi
    "$dk" rm -f cpe2e >/dev/null 2>&1
  fi

  # build with a RUN step (the classic builder: DOCKER_BUILDKIT=0)
  mkdir -p "$d/ctx"
  printf 'FROM localhost/e2e:2\nRUN rm /etc/base && echo built >/built && echo more >>/etc/new\n' >"$d/ctx/Dockerfile"
  if try "build with a RUN step" "$dk" build -q --network none -t localhost/e2e:b "$d/ctx"; then
    pass "build with a RUN step"
    if try "run the built image" "$dk" run --rm "${RUNOPTS[@]}" localhost/e2e:b sh -c \
      'cat /built /etc/new; ls /etc/base 2>&1 | grep -c "No such"'; then
      check "run the built image" "built new more 1" "$(one_line <<<"$out")"
    fi
  fi

  # cleanup: every container and image removed, dockerd stopped; then
  # nothing mounted below this mode's dir and no process of ours left.
  "$dk" rm -a -f >/dev/null 2>&1
  local images
  # (newest first, as listed: a child before its parent; again for what a
  # dependent child kept)
  for _ in 1 2 3; do
    mapfile -t images < <("$dk" images -q -a 2>/dev/null | awk '!seen[$0]++')
    [ ${#images[@]} = 0 ] && break
    "$dk" rmi -f "${images[@]}" >/dev/null 2>&1
  done
  local left_layers
  left_layers=$(find "$d/data/fuse-overlayfs" -mindepth 1 -maxdepth 1 ! -name l 2>/dev/null | wc -l)
  check "cleanup: no layer left after rm and rmi" 0 "$left_layers"
  stop_pid "${STARTED[-1]}"
  local mounts procs
  mounts=$(awk '{print $2" "$3}' /proc/mounts | grep "^$d/")
  procs=$(for p in $(ours); do tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80; echo; done | grep .)
  check "cleanup: dockerd stopped, no mount below its root, no unionfs/dockerd process" \
    "mounts [], processes []" "mounts [$(one_line <<<"$mounts")], processes [$(one_line <<<"$procs")]"
}


for m in $MODES; do
  if [ "$m" = rootless ]; then
    rootless_prepare || { fail "prepare the unprivileged user" "useradd/usermod failed"; continue; }
  fi
  run_mode "$m"
done

summary
