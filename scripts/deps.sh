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
  command -v fuse-overlayfs >/dev/null 2>&1 || missing+=(fuse-overlayfs)
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
