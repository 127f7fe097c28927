#!/usr/bin/env bash
# Installs what mounting and the tests need, when missing (Debian/Ubuntu).
# Sourced by the other scripts; safe to run again.
set -euo pipefail

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v setfattr >/dev/null 2>&1 || missing+=(attr)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v setfacl >/dev/null 2>&1 || missing+=(acl)
command -v flock >/dev/null 2>&1 || missing+=(util-linux)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
if [ "${UNIONFS_BENCH:-0}" = 1 ]; then
  # scripts/bench.sh and scripts/bench_dir_rename.sh: the peers, the loop-mounted
  # ext4 upper, fio, the build and untar workloads, the table's arithmetic.
  command -v fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
  command -v fio >/dev/null 2>&1 || missing+=(fio)
  command -v mkfs.ext4 >/dev/null 2>&1 || missing+=(e2fsprogs)
  command -v losetup >/dev/null 2>&1 || missing+=(mount)
  command -v fuser >/dev/null 2>&1 || missing+=(psmisc)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v xz >/dev/null 2>&1 || missing+=(xz-utils)
  command -v bc >/dev/null 2>&1 || missing+=(bc)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "unionfs: please install: ${missing[*]}" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  modprobe fuse 2>/dev/null || true
fi
