#!/usr/bin/env bash
# End to end with podman: unionfs as containers/storage's mount_program
# (`unionfs -o lowerdir=...,upperdir=...,workdir=...[,uidmapping=...] MNT`).
# Runs containers from a tiny busybox image built here (no registry), in a
# private storage root that is removed afterwards, and checks what the
# container sees:
#   1. run: the image's files, a write, `podman diff`;
#   2. commit: a deletion and a new file survive into a second image layer
#      (whiteouts written by unionfs read back by unionfs as a lower);
#   3. --uidmap: containers/storage hands uidmapping=/gidmapping= to
#      unionfs (leading-colon form); a file the container's root writes is
#      stored unshifted (0) in the upper and shows as root inside; and the
#      container sees the same owners as with fuse-overlayfs as the mount
#      program (podman 4.3 also idmaps the lowers with kernel idmapped
#      mounts, so image files show as 65534 inside with either);
#   4. no unionfs mount is left behind.
# Needs root. Installs podman, runc and busybox-static when missing.
#
#   scripts/podman_e2e.sh                 # builds the release binary first
#   UNIONFS_BIN=path scripts/podman_e2e.sh
#   KEEP=1 scripts/podman_e2e.sh          # keep the storage to look into
set -euo pipefail

cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "podman_e2e: needs root" >&2
  exit 1
fi
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
[ -x /bin/busybox ] || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${UNIONFS_BIN:-}" ]; then
  cargo build --release --quiet
  UNIONFS_BIN=$PWD/target/release/unionfs
fi

T=$(mktemp -d /tmp/unionfs-podman-e2e.XXXXXX)
# The mount program as podman sees it: logs its arguments, then runs unionfs.
cat >"$T/mount_program" <<EOF
#!/bin/sh
printf '%s\n' "\$*" >>"$T/mount_program.log"
exec "$UNIONFS_BIN" "\$@"
EOF
chmod 755 "$T/mount_program"

# runc: crun refuses this kind of hybrid cgroup setup; cgroupfs and a file
# event log: no systemd needed. Modest ulimits: a container may not raise
# them above ours.
P=(podman --root "$T/root" --runroot "$T/run" --storage-driver overlay
   --storage-opt "overlay.mount_program=$T/mount_program"
   --cgroup-manager cgroupfs --events-backend file --runtime runc)
RUN=(run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
# The same with fuse-overlayfs as the mount program, in its own storage.
FO=(podman --root "$T/fo-root" --runroot "$T/fo-run" --storage-driver overlay
    --storage-opt overlay.mount_program=/usr/bin/fuse-overlayfs
    --cgroup-manager cgroupfs --events-backend file --runtime runc)

cleanup() {
  set +e # best effort, every step
  if [ "${KEEP:-0}" = 1 ]; then
    echo "podman_e2e: kept $T (storage: ${P[*]})"
    return
  fi
  "${P[@]}" rm -a -f >/dev/null 2>&1 || true
  "${P[@]}" system reset -f >/dev/null 2>&1 || true
  "${FO[@]}" system reset -f >/dev/null 2>&1 || true
  # What is left mounted below $T (containers/storage binds its overlay
  # dir onto itself), deepest first.
  awk '{print $2}' /proc/mounts | grep "^$T/" | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
  rm -rf "$T"
}
trap cleanup EXIT

failures=0
check() { # check NAME EXPECTED ACTUAL
  if [ "$2" = "$3" ]; then
    echo "ok   $1"
  else
    echo "FAIL $1: expected [$2], got [$3]"
    failures=$((failures + 1))
  fi
}

# A one-layer image: busybox and a few files owned by root.
mkdir -p "$T/rootfs/bin" "$T/rootfs/etc" "$T/rootfs/data"
cp /bin/busybox "$T/rootfs/bin/"
for a in sh ls cat echo mkdir rm mv stat id sync grep; do ln -s busybox "$T/rootfs/bin/$a"; done
echo base >"$T/rootfs/etc/base"
echo gone >"$T/rootfs/etc/gone"
echo data >"$T/rootfs/data/file"
tar -C "$T/rootfs" --owner=0 --group=0 -c . | "${P[@]}" import -q - localhost/e2e:1 >/dev/null

echo "== 1. run"
out=$("${P[@]}" "${RUN[@]}" localhost/e2e:1 sh -c \
  'cat /etc/base; echo hi >/data/file; cat /data/file; stat -c "%u:%g" /etc/base; grep " / / " /proc/self/mountinfo | grep -c fuse')
check "image file read" base "$(sed -n 1p <<<"$out")"
check "write over a lower file" hi "$(sed -n 2p <<<"$out")"
check "owner of an image file" 0:0 "$(sed -n 3p <<<"$out")"
check "root is a FUSE mount" 1 "$(sed -n 4p <<<"$out")"
grep -q "lowerdir=" "$T/mount_program.log" && echo "ok   podman ran the mount program" ||
  { echo "FAIL podman never ran the mount program"; failures=$((failures + 1)); }

echo "== 2. commit a change, run the new image"
"${P[@]}" run --name c2 --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  localhost/e2e:1 sh -c 'rm /etc/gone; echo new >/etc/new; mkdir /made; echo m >/made/x' >/dev/null
diff_out=$("${P[@]}" diff c2 | sort | tr '\n' ' ')
check "podman diff" "A /etc/new A /made A /made/x C /etc D /etc/gone " "$diff_out"
"${P[@]}" commit -q c2 localhost/e2e:2 >/dev/null
"${P[@]}" rm c2 >/dev/null
out=$("${P[@]}" "${RUN[@]}" localhost/e2e:2 sh -c \
  'ls /etc | tr "\n" " "; cat /etc/new; cat /made/x; cat /data/file')
# (podman adds /etc/hostname, hosts and mtab as mount targets.)
listing=$(tr '\n' ' ' <<<"$out" | sed 's/  */ /g; s/ $//; s/hostname //; s/hosts //; s/mtab //')
check "deleted file stays deleted, new ones are there" "base new new m data" "$listing"

echo "== 3. --uidmap"
: >"$T/mount_program.log"
UIDMAP=(--uidmap 0:100000:65536 --gidmap 0:100000:65536)
SCRIPT='stat -c "%u:%g" /etc/new /data/file; echo x >/owned; stat -c "%u:%g" /owned; id -u'
out=$("${P[@]}" run --name c3 --network none --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 \
  "${UIDMAP[@]}" localhost/e2e:2 sh -c "$SCRIPT")
if grep -Eq "uidmapping=:?0:100000:65536" "$T/mount_program.log" &&
   grep -Eq "gidmapping=:?0:100000:65536" "$T/mount_program.log"; then
  echo "ok   containers/storage passed uidmapping=/gidmapping= to unionfs"
else
  echo "FAIL no uidmapping= in the mount program's arguments: $(cat "$T/mount_program.log")"
  failures=$((failures + 1))
fi
check "a file the container's root made, inside" "0:0 0" "$(sed -n '3,4p' <<<"$out" | tr '\n' ' ' | sed 's/ $//')"
upper=$("${P[@]}" inspect --format '{{.GraphDriver.Data.UpperDir}}' c3)
check "stored unshifted in the upper" 0:0 "$(stat -c %u:%g "$upper/owned")"
"${P[@]}" rm c3 >/dev/null
if [ -x /usr/bin/fuse-overlayfs ]; then
  "${P[@]}" save -q localhost/e2e:2 | "${FO[@]}" load -q >/dev/null
  fo=$("${FO[@]}" "${RUN[@]}" "${UIDMAP[@]}" localhost/e2e:2 sh -c "$SCRIPT" 2>&1 || true)
  check "same owners as with fuse-overlayfs" "$(tr '\n' ' ' <<<"$fo")" "$(tr '\n' ' ' <<<"$out")"
else
  echo "skip comparison with fuse-overlayfs (not installed)"
fi

echo "== 4. nothing left mounted"
left=$(grep " fuse.unionfs " /proc/mounts | awk '{print $2}' | grep -c "^$T/" || true)
check "unionfs mounts left" 0 "$left"

if [ "$failures" -gt 0 ]; then
  echo "podman_e2e: $failures check(s) failed"
  exit 1
fi
echo "podman_e2e: all checks passed"
