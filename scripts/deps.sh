#!/usr/bin/env bash
# Installs what mounting, the tests and the conformance suites need, when
# missing (Debian/Ubuntu). Run by the other scripts; safe to run again.
#
# Every external command that tests/ runs (Command::new or inside a shell
# string) is checked here, even those of Essential packages, so that a minimal
# or trimmed image still passes `CI=true scripts/test.sh`. When you make a test
# run a new command, add it below with the package that provides it
# (`dpkg -S bin/CMD`).
set -euo pipefail

missing=()
# need CMD PKG: install PKG unless CMD is on PATH.
need() {
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}

# Mounting (the daemon unmounts with fusermount3 when umount(2) is refused).
need fusermount3 fuse3

# Commands the tests run (tests/**/*.rs).
need mount mount                   # kernel overlayfs, tmpfs, fusectl, remount
need umount mount
need sh dash                       # create.rs, inode_numbers.rs, hard_links.rs shell strings
need find findutils                # inode_numbers.rs: find | wc -l
need du coreutils                  # inode_numbers.rs: du -a | wc -l
need wc coreutils
need cp coreutils                  # crash.rs: cp -a
need truncate coreutils            # create.rs as_user scripts
need mkfifo coreutils
need tar tar                       # hard_links.rs: tar of the mount
need rsync rsync                   # hard_links.rs: rsync -aH of the mount
need setfacl acl                   # copy_up.rs: ACLs
need flock util-linux              # file_io.rs: a lock held by another process
need setfattr attr                 # differential repro scripts
need strace strace                 # volatile_mount.rs: which syncs the daemon makes
need sync coreutils                # volatile_mount.rs: fsync/fdatasync/fsyncdir through the mount
need kill procps                   # volatile_mount.rs: stops strace
need xfs_io xfsprogs               # mmap_times.rs: mmap writes as xfstests makes them
# upper_formats.rs reads an oci-format upper back through an independent
# implementation (oci_format_upper_holds_exactly_the_whiteouts_of_an_image_layer_diff).
need fuse-overlayfs fuse-overlayfs
# create.rs runs commands as another uid. Newer Debian ships setpriv in
# its own package; bookworm and older in util-linux.
if ! command -v setpriv >/dev/null 2>&1; then
  if command -v apt-cache >/dev/null 2>&1 &&
     apt-cache policy setpriv 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    missing+=(setpriv)
  else
    missing+=(util-linux)
  fi
fi

# scripts/conformance.sh: builds pjdfstest, runs it and unionmount-testsuite.
need autoreconf autoconf
need aclocal automake
need gcc gcc
need cc gcc                        # pjdfstest's configure: AC_PROG_CC([cc])
need make make
[ -e /usr/include/stdio.h ] || missing+=(libc6-dev)
# unionmount-testsuite's ./run starts with #!/usr/bin/python3: a python3
# elsewhere on PATH (pyenv, venv) does not count.
[ -x /usr/bin/python3 ] || missing+=(python3)
need openssl openssl               # pjdfstest's misc.sh names files with openssl md5
need unshare util-linux            # run-suites.sh runs in a private mount namespace
need timeout coreutils
need findmnt util-linux            # conformance.sh: which fs the layers sit on
need losetup mount                 # conformance.sh: ext4 image when /tmp is not ext4
need mkfs.ext4 e2fsprogs
# faults.rs: a btrfs lower on a loop image whose data turns bad (EIO);
# upper_fs.rs: the upper on ext4, xfs, btrfs and tmpfs loop images, and
# whether a reflinked copy-up shares extents (filefrag -v).
need mkfs.btrfs btrfs-progs
need mkfs.xfs xfsprogs
need filefrag e2fsprogs

if [ "${UNIONFS_BENCH:-0}" = 1 ]; then
  # scripts/bench.sh and scripts/bench_dir_rename.sh: the loop-mounted ext4
  # upper, fio, the build and untar workloads, the table's arithmetic.
  need fio fio
  need fuser psmisc
  need xz xz-utils
  need python3 python3
  need bc bc
fi

if [ ${#missing[@]} -gt 0 ]; then
  # one name once, in a stable order
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
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
