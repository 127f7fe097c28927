#!/usr/bin/env bash
# Benchmarks unionfs against kernel overlayfs and fuse-overlayfs (1.x from
# the distribution = FO1, 2.0.0 from crates.io = FO2) over the same three
# lowers, in the same run, and prints a markdown table of medians.
#
# Needs root. Usage: scripts/bench.sh [--rootless | --both]
# Environment:
#   MODE=root     root: every target mounted by root, workload run as root
#                 rootless (or --rootless): the FUSE targets (unionfs, FO1,
#                 FO2) mounted by an unprivileged user (BENCH_UID, default
#                 1000) through the setuid fusermount3 with allow_other, and
#                 every workload run as that user, on layers (a copy of the
#                 data set) and uppers it owns; kernel overlayfs stays a root
#                 mount, the reference column. Root-only features of the
#                 daemons (FUSE passthrough, the read-ahead raise) are then
#                 off by the kernel's rules, no flag is passed for them.
#                 both (or --both): the two, interleaved (for each row and
#                 repetition: root, then rootless), one table each.
#                 Any mode but root runs in a private mount namespace where a
#                 0666 /dev/fuse and an /etc/fuse.conf with user_allow_other
#                 are bind-mounted over the real ones: nothing on the host
#                 changes, and the namespace goes away with the script.
#   RUNS=3        repetitions; each repetition runs every target in turn
#                 (interleaved, starting target rotated per repetition)
#   QUICK=1       data set and write sizes 10x smaller (a smoke run of minutes)
#   ONLY=REGEX    run only rows whose id matches (ids: find ls-lR ls-f dd-read
#                 tar-c create dd-write fio copy-up rm-rf untar grep make
#                 chown-R)
#   TARGETS=kernel,fo1,fo2,unionfs,unionfs-meta   targets to run, in this
#                 order; unionfs-meta (unionfs -o metacopy=on) runs only in
#                 the chown-R row, and only if the binary accepts the option
#                 (else its column says "not available")
#   URING=on|off  set fuse's enable_uring (FUSE over io_uring) for the run,
#                 restored after, and with on mount unionfs with
#                 `-o io_uring=on`; unset: the host's setting, unionfs on
#                 /dev/fuse. The table's notes say which it was.
#   BENCH_OUT=FILE.md   where the table is also written, raw results in
#                 FILE.tsv (default under /var/tmp/unionfs-bench-results/)
#
# Data set (generated once by scripts/bench_data.py, deterministically, and
# cached in /var/tmp/unionfs-bench-data/<version key>): three lowers holding
# a Rust toolchain split file by file round-robin (every dir merged) plus a
# 100k small-file tree (also round-robin), a 50k-entry dir over the three
# lowers, a 1 GiB file, a C project, and a source tarball.
#
# Each mount gets a fresh upper: a new journaled ext4 made with mkfs.ext4 in a
# file under /var/tmp and loop-mounted (the work dir on it too), removed after.
# Modes: cold = new mount, `sync; echo 3 > drop_caches` just before the timed
# pass; fresh = new mount, page cache warm (the lower files were read just
# before, outside the mount); warm = a second pass on the same mount.
# FUSE daemons' CPU time (utime+stime from /proc/PID/stat, delta over the
# timed pass) and peak RSS (VmHWM at its end) are reported too.
# The output of read workloads (entry counts, byte counts) is compared across
# targets and a mismatch is flagged in the table: a fast wrong answer is not
# a win. No timing is asserted anywhere.
# The chown-R row also reports the bytes its upper holds after the pass
# (`du -s`): a metadata-only copy-up (kernel metacopy=on) copies no data.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/bench_lib.sh
. scripts/bench_lib.sh
bench_require_root

MODE=${MODE:-root}
for a in "$@"; do
  case $a in
    --rootless) MODE=rootless ;;
    --both) MODE=both ;;
    --root) MODE=root ;;
    *) bench_die "unknown argument $a (--root, --rootless, --both)" ;;
  esac
done
case $MODE in
  root) modes=(root) ;;
  rootless) modes=(rootless) ;;
  both) modes=(root rootless) ;;
  *) bench_die "MODE=$MODE: root, rootless or both" ;;
esac
BENCH_UID=${BENCH_UID:-1000}
if [ "$MODE" != root ] && [ "${BENCH_IN_NS:-}" != $$ ]; then
  # The rest in a private mount namespace (see MODE above); BENCH_IN_NS
  # tells the new shell (the same pid: exec) that it is inside.
  [ "$BENCH_UID" != 0 ] || bench_die "BENCH_UID=0 is not unprivileged"
  [ -u "$(command -v fusermount3)" ] || bench_die "fusermount3 is missing or not setuid"
  command -v setpriv >/dev/null || bench_die "setpriv (util-linux) is missing"
  export MODE BENCH_IN_NS=$$
  exec unshare --mount --propagation private -- bash "$0"
fi
UNIONFS_BENCH=1 bash scripts/deps.sh

RUNS=${RUNS:-3}
QUICK=${QUICK:-0}
ONLY=${ONLY:-.}
TARGETS=${TARGETS:-kernel,fo1,fo2,unionfs,unionfs-meta}
DATA_ROOT=${DATA_ROOT:-/var/tmp/unionfs-bench-data}
RESULTS_DIR=/var/tmp/unionfs-bench-results
started=$(bench_now)

bench_log "building the release binary${CARGO_TARGET_DIR:+ (in $CARGO_TARGET_DIR)}"
cargo build --release --quiet

# --- targets ---------------------------------------------------------------
notes=()
IFS=, read -r -a want <<<"$TARGETS"
kinds=()       # the targets that run
unavail=()     # asked for, shown as "not available" (unionfs-meta)
bench_init /var/tmp/unionfs-bench-run
[ -z "${URING:-}" ] || bench_set_uring "$URING"
if [ "$BENCH_URING" = on ]; then
  notes+=("URING=on: fuse's enable_uring on, unionfs mounted with \`-o io_uring=on\` took its requests through FUSE over io_uring (FO1's libfuse 3.14 cannot)")
else
  notes+=("unionfs took its requests through /dev/fuse (fuse's enable_uring: $(cat "$BENCH_URING_PARAM" 2>/dev/null || echo absent))")
fi
for k in "${want[@]}"; do
  if [ "$k" = fo2 ] && ! bench_install_fo2; then
    notes+=("FO2 (fuse-overlayfs 2.0.0) not run: \`cargo install fuse-overlayfs --version 2.0.0\` failed (see $BENCH_TOOLS/install.log)")
    continue
  fi
  if [ "$k" = unionfs-meta ]; then
    bench_probe_unionfs_meta "$BENCH_BASE/probe"
    if [ "$BENCH_UNIONFS_META" != 1 ]; then
      notes+=("unionfs-meta (\`unionfs -o metacopy=on\`) not available: the binary refuses the option (${BENCH_UNIONFS_META_WHY:-no answer})")
      unavail+=("$k")
      continue
    fi
  fi
  if ! bench_kind_available "$k"; then
    notes+=("$k not run: not available here")
    continue
  fi
  kinds+=("$k")
done
[ ${#kinds[@]} -gt 0 ] || bench_die "no target to run (TARGETS=$TARGETS)"

if [ "$MODE" != root ]; then
  # In this private namespace only (see MODE): a 0666 /dev/fuse and
  # user_allow_other (fusermount3 refuses allow_other to users without it).
  mknod "$BENCH_BASE/fuse" c 10 229
  chmod 666 "$BENCH_BASE/fuse"
  mount --bind "$BENCH_BASE/fuse" /dev/fuse
  bench_mounts+=(/dev/fuse)
  { cat /etc/fuse.conf 2>/dev/null || true; echo user_allow_other; } >"$BENCH_BASE/fuse.conf"
  mount --bind "$BENCH_BASE/fuse.conf" /etc/fuse.conf
  bench_mounts+=(/etc/fuse.conf)
  # The user reaches the mount point and uppers under $BENCH_BASE, and
  # runs the binaries (a target dir under /root would not do).
  chmod 755 "$BENCH_BASE"
  mkdir "$BENCH_BASE/home"
  chown "$BENCH_UID:$BENCH_UID" "$BENCH_BASE/home"
  for b in "$UNIONFS_BIN" "$FO1_BIN" "$FO2_BIN"; do
    if [ -e "$b" ] && ! setpriv --reuid="$BENCH_UID" --regid="$BENCH_UID" --clear-groups -- test -x "$b"; then
      bench_die "$b is not executable by uid $BENCH_UID (set CARGO_TARGET_DIR to a dir it can reach, e.g. /var/tmp/target-bench)"
    fi
  done
fi

# --- data set --------------------------------------------------------------
if [ "$QUICK" = 1 ]; then SCALE=10; else SCALE=1; fi
SYSROOT=$(rustc --print sysroot)
DATA_KEY="v1-scale$SCALE-$(rustc -V | tr -c 'A-Za-z0-9.\n' _)-$(sha256sum scripts/bench_data.py | cut -c1-12)"
DATA=$DATA_ROOT/$DATA_KEY
if [ ! -e "$DATA/complete" ]; then
  bench_log "generating the data set in $DATA (once; later runs reuse it)"
  mkdir -p "$DATA_ROOT"
  rm -rf "$DATA.tmp"
  mkdir "$DATA.tmp"
  python3 scripts/bench_data.py "$DATA.tmp" "$SYSROOT" "$SCALE"
  sync
  touch "$DATA.tmp/complete"
  mv "$DATA.tmp" "$DATA"
fi
# shellcheck disable=SC1091
. "$DATA/manifest"
if [ "$MODE" != root ]; then
  # The layers must be the user's: a copy of the data set owned by it (made
  # once, beside the data set). In MODE=both the root table uses it too, so
  # that both tables read the same files.
  UDATA=$DATA-uid$BENCH_UID
  if [ ! -e "$UDATA/complete" ]; then
    bench_log "copying the data set to $UDATA, owned by uid $BENCH_UID (once)"
    rm -rf "$UDATA.tmp"
    cp -a "$DATA" "$UDATA.tmp"
    rm "$UDATA.tmp/complete"
    chown -R "$BENCH_UID:$BENCH_UID" "$UDATA.tmp"
    sync
    touch "$UDATA.tmp/complete"
    mv "$UDATA.tmp" "$UDATA"
  fi
  DATA=$UDATA
fi
LOWERS=$DATA/l1:$DATA/l2:$DATA/l3

N_CREATE=$((20000 / SCALE))
WRITE_MIB=$((1024 / SCALE))
FIO_MIB=$((256 / SCALE))
if [ "$SCALE" = 1 ]; then UPPER_SIZE=3G; else UPPER_SIZE=1G; fi

MNT=$BENCH_BASE/mnt
UP=$BENCH_BASE/up
mkdir -p "$MNT"

# --- rows ------------------------------------------------------------------
# def_row ID MODES LABEL CMD [CHECK] [PREP] [SETUP] [WARM_LOWER]
#   CMD runs in the mount point; its exit status must be 0. With CHECK=1 its
#   output must be the same on every target. PREP runs in the mount before
#   the timed pass (untimed); SETUP in an earlier mount of the same upper
#   (untimed, unmounted before the measured mount); WARM_LOWER in the data
#   dir (l1 l2 l3), before the fresh mount, to warm the page cache.
#   CMD, PREP and SETUP run as the mode's user (root or BENCH_UID).
# Per row, optional: R_CMD_RL/R_LABEL_RL (the rootless command and label,
# where root's cannot run unprivileged), R_KOPTS (more kernel overlayfs
# options), R_META=1 (unionfs-meta runs it), R_DU=1 (report `du -s` of the
# upper after the timed pass).
rows=()
declare -A R_MODES R_LABEL R_CMD R_CHECK R_PREP R_SETUP R_WARM R_CMD_RL R_LABEL_RL R_KOPTS R_META R_DU
def_row() {
  rows+=("$1")
  R_MODES[$1]=$2 R_LABEL[$1]=$3 R_CMD[$1]=$4 R_CHECK[$1]=${5:-0}
  R_PREP[$1]=${6:-} R_SETUP[$1]=${7:-} R_WARM[$1]=${8:-}
}
gen3='tree/gen/d00 tree/gen/d01 tree/gen/d02'
def_row find "cold fresh warm" "\`find tree\` ($TREE_ENTRIES entries, merged)" \
  'find tree | wc -l' 1
def_row ls-lR "cold fresh warm" "\`ls -lR tree\`" \
  'ls -lR tree | wc -l' 1
def_row ls-f "warm" "\`ls -f\` of one dir of $WIDE_ENTRIES entries" \
  'ls -f wide | wc -l' 1
def_row dd-read "fresh" "\`dd\` read of a $BIG_MIB MiB lower file, bs=1M" \
  'dd if=big.bin of=/dev/null bs=1M status=none' 0 '' '' \
  'cat l3/big.bin >/dev/null'
def_row tar-c "fresh warm" "\`tar c\` of $((30 * GEN_FILES_PER_DIR)) small lower files \\| wc -c" \
  "tar c $gen3 | wc -c" 1 '' '' \
  'tar c l?/tree/gen/d0[012] | cat >/dev/null'
def_row create "fresh" "create $N_CREATE files (one dir, \`echo >\`, no sync)" \
  "mkdir new && for i in \$(seq $N_CREATE); do echo \$i >new/f\$i; done"
def_row dd-write "fresh" "\`dd\` write $WRITE_MIB MiB, bs=1M, conv=fsync" \
  "dd if=/dev/zero of=out.bin bs=1M count=$WRITE_MIB conv=fsync status=none"
def_row fio "fresh" "fio 4k randrw 50/50, $FIO_MIB MiB file, $((FIO_MIB * 256)) ops, psync, end_fsync" \
  "fio --name=randrw --filename=fio.dat --size=${FIO_MIB}M --rw=randrw --bs=4k --ioengine=psync --randrepeat=1 --end_fsync=1 --output-format=terse >/dev/null" 0 \
  "fio --name=layout --filename=fio.dat --size=${FIO_MIB}M --create_only=1 >/dev/null"
# shellcheck disable=SC2016 # "$f" expands when the row runs
def_row copy-up "fresh" "copy-up: append a line to $((2 * GEN_FILES_PER_DIR)) lower files" \
  'for f in tree/gen/d05/s00/* tree/gen/d05/s01/*; do echo x >>"$f"; done' 0 '' '' \
  'cat l?/tree/gen/d05/s0[01]/* >/dev/null'
def_row rm-rf "fresh" "\`rm -rf\` of $((20 * GEN_FILES_PER_DIR)) lower files" \
  'rm -rf tree/gen/d03 tree/gen/d04' 0 '' '' \
  'ls -lR l?/tree/gen/d0[34] >/dev/null'
def_row untar "fresh" "\`tar xf\` of a source tarball ($SRC_FILES files, uncompressed, no sync)" \
  'mkdir x && tar xf src.tar -C x' 0 '' '' \
  'cat l2/src.tar >/dev/null'
def_row grep "fresh warm" "\`grep -r\` of the untarred tree (in the upper)" \
  'grep -r TODO x | wc -l' 1 '' 'mkdir x && tar xf src.tar -C x'
def_row make "fresh" "\`make -j2\` of a C project in the lowers ($C_MODULES .c files)" \
  'make -s -j2 -C cproj && cproj/app' 1 '' '' \
  'cat l?/cproj/src/* l?/cproj/include/* l?/cproj/Makefile >/dev/null &&
   printf "#include <stdio.h>\nint main(void) { return puts(\"\"); }\n" | cc -O1 -x c -o /dev/null -'

# issue 18: a metadata-only change of every file of the generated tree, then
# a pass that stats them all (-cnewer: changed since the mount; the owner or
# mode checked). Kernel overlayfs with metacopy=on copies up metadata only.
# Rootless, a user can chown only to itself: chmod -R g+w instead.
gen_n=$((100 * GEN_FILES_PER_DIR))
def_row chown-R "fresh" "\`chown -R\` to another uid of $gen_n lower files, then \`find -cnewer -uid\` over them" \
  "chown -R $((BENCH_UID + 1)):$((BENCH_UID + 1)) tree/gen && find tree/gen -cnewer .ref -uid $((BENCH_UID + 1)) | wc -l" 1 \
  'touch .ref && sleep 0.1' '' 'ls -lR l?/tree/gen >/dev/null'
R_CMD_RL[chown-R]="chmod -R g+w tree/gen && find tree/gen -cnewer .ref -perm -g+w | wc -l"
R_LABEL_RL[chown-R]="\`chmod -R g+w\` (rootless: no chown to another uid) of $gen_n lower files, then \`find -cnewer -perm\` over them"
R_KOPTS[chown-R]=,metacopy=on,redirect_dir=on
R_META[chown-R]=1
R_DU[chown-R]=1

sel=()
for r in "${rows[@]}"; do [[ $r =~ $ONLY ]] && sel+=("$r"); done
[ ${#sel[@]} -gt 0 ] || bench_die "no row matches ONLY=$ONLY"

# --- measuring -------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
suffix=
[ "$MODE" = root ] || suffix=-$MODE
[ "$QUICK" = 1 ] && suffix=$suffix-quick
BENCH_OUT=${BENCH_OUT:-$RESULTS_DIR/bench-$(date +%Y%m%d-%H%M%S)$suffix.md}
# Raw results (one line per timed pass), kept next to the table; one file
# per mode in MODE=both.
results_file() {
  if [ "$MODE" = both ]; then echo "${BENCH_OUT%.md}-$1.tsv"; else echo "${BENCH_OUT%.md}.tsv"; fi
}
for m in "${modes[@]}"; do : >"$(results_file "$m")"; done

# set_mode MODE: root or rootless, for the sessions that follow.
set_mode() {
  CUR_MODE=$1
  RESULTS=$(results_file "$1")
  if [ "$1" = rootless ]; then BENCH_RUN_UID=$BENCH_UID; else BENCH_RUN_UID=; fi
  chown "${BENCH_RUN_UID:-0}:${BENCH_RUN_UID:-0}" "$MNT"
}

# row_cmd ROW: the command of ROW in the current mode.
row_cmd() {
  if [ "$CUR_MODE" = rootless ] && [ -n "${R_CMD_RL[$1]:-}" ]; then
    echo "${R_CMD_RL[$1]}"
  else
    echo "${R_CMD[$1]}"
  fi
}

new_upper() {
  bench_loop_fs "$UPPER_SIZE" "$UP"
  mkdir "$UP/upper" "$UP/work"
  if [ -n "$BENCH_RUN_UID" ]; then
    chown "$BENCH_RUN_UID:$BENCH_RUN_UID" "$UP/upper" "$UP/work"
  fi
}
drop_upper() { bench_loop_fs_remove "$UP"; }
do_mount() {
  BENCH_KERNEL_ROW_OPTS=${R_KOPTS[$2]:-}
  bench_mount "$1" "$LOWERS" "$UP/upper" "$UP/work" "$MNT"
}
do_umount() { bench_umount "$1" "$MNT" "$DAEMON_PID"; }

# in_user_mount CMD: runs CMD in the mount point as the mode's user, with
# pipefail (as the script's own shell would).
in_user_mount() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  bench_as_user bash -o pipefail -c 'cd "$1" && eval "$2"' in_mount "$MNT" "$1"
}

# in_mount CMD: runs CMD in the mount point, untimed; failure is fatal.
in_mount() {
  in_user_mount "$1" >/dev/null 2>"$BENCH_BASE/err" ||
    { cat "$BENCH_BASE/err" >&2; bench_die "untimed step failed: $1"; }
}

# timed KIND ROW MODE REP: one timed pass of ROW's command in the mount.
timed() {
  local kind=$1 row=$2 mode=$3 rep=$4 c0=0 c1=0 hwm=- cpu=- t0 t1 rc=0 check secs k0 k1 client du=- cmd
  cmd=$(row_cmd "$row")
  sync
  if [ "$mode" = cold ]; then bench_drop_caches; fi
  [ -n "$DAEMON_PID" ] && c0=$(bench_cpu_ticks "$DAEMON_PID")
  bench_children_cpu k0
  t0=$(bench_now)
  in_user_mount "$cmd" >"$BENCH_BASE/out" 2>"$BENCH_BASE/err" || rc=$?
  t1=$(bench_now)
  bench_children_cpu k1
  client=$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", b - a }')
  if [ -n "$DAEMON_PID" ]; then
    c1=$(bench_cpu_ticks "$DAEMON_PID")
    cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    hwm=$(bench_hwm_kib "$DAEMON_PID")
  fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  if [ "${R_DU[$row]:-0}" = 1 ]; then
    # KiB the upper holds (the daemon's writes not yet flushed count too:
    # ext4 charges delayed allocations to st_blocks)
    du=$(du -sk "$UP/upper" | cut -f1)
  fi
  check=$(head -c 200 "$BENCH_BASE/out" | tr '\t\n' '  ')
  if [ "$rc" != 0 ]; then
    echo "  $CUR_MODE $kind $row $mode: exit $rc: $(head -c 300 "$BENCH_BASE/err")" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$mode" "$kind" "$rep" "$secs" "$cpu" "${hwm:--}" "$rc" "$check" "$client" "$du" >>"$RESULTS"
  bench_log "  [$CUR_MODE] $row $mode $kind run $rep: ${secs}s daemon cpu ${cpu}s client cpu ${client}s rss ${hwm:--} KiB${check:+ (output: $check)}$([ "$du" = - ] || echo " upper ${du} KiB")"
}

# session KIND ROW REP: every mode of ROW on KIND, each mount on a fresh upper.
session() {
  local kind=$1 row=$2 rep=$3 rmodes=" ${R_MODES[$2]} "
  if [[ $rmodes == *" cold "* ]]; then
    new_upper
    do_mount "$kind" "$row"
    [ -n "${R_PREP[$row]}" ] && in_mount "${R_PREP[$row]}"
    timed "$kind" "$row" cold "$rep"
    do_umount "$kind"
    drop_upper
  fi
  if [[ $rmodes == *" fresh "* || $rmodes == *" warm "* ]]; then
    new_upper
    if [ -n "${R_SETUP[$row]}" ]; then
      do_mount "$kind" "$row"
      in_mount "${R_SETUP[$row]}"
      do_umount "$kind"
    fi
    if [ -n "${R_WARM[$row]}" ]; then
      (cd "$DATA" && eval "${R_WARM[$row]}") >/dev/null  # as root: reads only
    fi
    do_mount "$kind" "$row"
    [ -n "${R_PREP[$row]}" ] && in_mount "${R_PREP[$row]}"
    if [[ $rmodes == *" fresh "* ]]; then
      timed "$kind" "$row" fresh "$rep"
    else
      in_mount "$(row_cmd "$row")"
    fi
    if [[ $rmodes == *" warm "* ]]; then
      timed "$kind" "$row" warm "$rep"
    fi
    do_umount "$kind"
    drop_upper
  fi
}

# row_kinds ROW: the targets ROW runs on (unionfs-meta only where R_META).
row_kinds() {
  local k
  rk=()
  for k in "${kinds[@]}"; do
    if [ "$k" != unionfs-meta ] || [ "${R_META[$1]:-0}" = 1 ]; then rk+=("$k"); fi
  done
}

bench_log "MODE=$MODE; data set $DATA; targets: ${kinds[*]}; rows: ${sel[*]}; RUNS=$RUNS"
for row in "${sel[@]}"; do
  row_kinds "$row"
  for rep in $(seq "$RUNS"); do
    for m in "${modes[@]}"; do
      set_mode "$m"
      n=${#rk[@]}
      for ((i = 0; i < n; i++)); do
        session "${rk[(i + rep - 1) % n]}" "$row" "$rep"
      done
    done
  done
done

# --- the tables ------------------------------------------------------------
elapsed=$(awk -v a="$started" -v b="$(bench_now)" 'BEGIN { printf "%d", b - a }')
# The columns: the targets run, and those asked for but not available.
cols=()
for k in "${want[@]}"; do
  for c in "${kinds[@]}" "${unavail[@]}"; do
    if [ "$c" = "$k" ]; then
      # unionfs-meta: a column only if a selected row is one of its rows
      if [ "$k" = unionfs-meta ]; then
        for r in "${sel[@]}"; do [ "${R_META[$r]:-0}" = 1 ] && { cols+=("$k"); break; }; done
      else
        cols+=("$k")
      fi
      break
    fi
  done
done
labels=()
for k in "${kinds[@]}"; do labels+=("$k=$(bench_kind_label "$k")"); done
ROWS_META=$BENCH_BASE/rows.tsv

# print_table MODE: the markdown table of MODE's results.
print_table() {
  local m=$1 row label
  : >"$ROWS_META"
  for row in "${sel[@]}"; do
    label=${R_LABEL[$row]}
    if [ "$m" = rootless ] && [ -n "${R_LABEL_RL[$row]:-}" ]; then label=${R_LABEL_RL[$row]}; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "${R_MODES[$row]}" "$label" "${R_CHECK[$row]}" \
      "${R_META[$row]:-0}" "${R_DU[$row]:-0}" >>"$ROWS_META"
  done
  if [ "$m" = rootless ]; then
    echo "#### MODE=rootless: FUSE daemons (FO1, FO2, unionfs) run as uid $BENCH_UID, mounted through fusermount3 with allow_other; kernel overlayfs mounted by root; every workload runs as uid $BENCH_UID"
    echo
    echo "Layers (a copy of the data set) and uppers owned by uid $BENCH_UID; each daemon's uid was checked at every mount. No root-only daemon feature: FUSE passthrough and the read-ahead raise are off by the kernel's rules (no flag passed). CPU and RSS are the unprivileged daemon's."
  else
    echo "#### MODE=root: every target mounted by root, workloads run as root"
    echo
    echo "Daemons as root: unionfs uses FUSE passthrough for upper files where the kernel has it and raises the mount's read-ahead."
  fi
  echo
  python3 - "$(results_file "$m")" "$ROWS_META" "$BENCH_KERNEL_OPTS" "${unavail[*]}" "${cols[@]}" <<'EOF'
import sys
from collections import defaultdict

results, meta, kopts, unavail, kinds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(), sys.argv[5:]
name = {"kernel": "kernel", "fo1": "FO1", "fo2": "FO2", "unionfs": "unionfs", "unionfs-meta": "unionfs-meta"}
fuse = [k for k in kinds if k != "kernel"]
runs = defaultdict(list)  # (row, mode, kind) -> [(secs, cpu, hwm, rc, check, client, du)]
for line in open(results):
    row, mode, kind, rep, secs, cpu, hwm, rc, check, *rest = line.rstrip("\n").split("\t")
    rest += ["-", "-"]
    runs[(row, mode, kind)].append((float(secs), cpu, hwm, int(rc), check, rest[0], rest[1]))


def median(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if xs else None


def fmt(x):
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


rows = [line.rstrip("\n").split("\t") for line in open(meta)]
any_du = any(r[5] == "1" for r in rows)
head = ["workload", "mode"] + [name[k] + " s" for k in kinds]
if "unionfs" in kinds and ("fo1" in kinds or "fo2" in kinds):
    head.append("u/peer")
if fuse:
    head += ["CPU s " + " / ".join(name[k] for k in fuse), "RSS MiB " + " / ".join(name[k] for k in fuse)]
if "unionfs" in kinds:
    head.append("client CPU s (unionfs)")
if any_du:
    head.append("upper MiB after " + " / ".join(name[k] for k in kinds))
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
footnotes = []
for row, modes, label, check, meta_row, du_row in rows:
    # the targets of this row: unionfs-meta only in its rows
    here = [k for k in kinds if k != "unionfs-meta" or meta_row == "1"]
    for mode in modes.split():
        med, cells, cpus, rsss, outs, dus = {}, [], [], [], {}, []
        for k in kinds:
            rs = runs.get((row, mode, k), [])
            failed = [r for r in rs if r[3] != 0]
            if not rs:
                med[k] = None
            elif failed:
                med[k] = None
                footnotes.append(f"{row} {mode} on {name[k]}: {len(failed)} of {len(rs)} runs failed (exit {failed[0][3]})")
            else:
                med[k] = median([r[0] for r in rs])
            outs[k] = sorted(set(r[4] for r in rs if r[3] == 0))
            na = "n/a" if k in unavail and k in here else "-"
            if k != "kernel":
                c = [float(r[1]) for r in rs if r[1] not in ("-", "")]
                h = [int(r[2]) for r in rs if r[2] not in ("-", "")]
                cpus.append(f"{median(c):.2f}" if c else na)
                rsss.append(f"{max(h) / 1024:.0f}" if h else na)
            d = [int(r[6]) for r in rs if r[6] not in ("-", "")]
            dus.append(f"{median(d) / 1024:.1f}" if d else na)
        kern = med.get("kernel")
        for k in kinds:
            rs = runs.get((row, mode, k), [])
            if k in unavail and k in here:
                cells.append("not available")
            elif rs and any(r[3] != 0 for r in rs):
                cells.append("FAIL")
            elif med[k] is None:
                cells.append("-")
            elif k != "kernel" and kern:
                cells.append(f"{fmt(med[k])} ({med[k] / kern:.1f}x)")
            else:
                cells.append(fmt(med[k]))
        if check == "1":
            seen = {k: v for k, v in outs.items() if v}
            if len(set(tuple(v) for v in seen.values())) > 1:
                # The reference answer: the kernel's, else the most common one.
                vals = [tuple(v) for v in seen.values()]
                ref = tuple(seen["kernel"]) if "kernel" in seen else max(vals, key=vals.count)
                cells = [c + (" ≠" if k in seen and tuple(seen[k]) != ref else "") for k, c in zip(kinds, cells)]
                footnotes.append(
                    f"{row} {mode}: outputs differ between targets (≠ marks those unlike the kernel's): "
                    + "; ".join(f"{name[k]}: {' | '.join(v)}" for k, v in seen.items()))
        if meta_row == "1" and "kernel" in kinds:
            label += f" (kernel: {kopts.lstrip(',') + ',' if kopts else ''}metacopy=on,redirect_dir=on)"
        out = [label, mode] + cells
        if "u/peer" in head:
            peers = [med[k] for k in ("fo1", "fo2") if k in kinds and med.get(k)]
            u = med.get("unionfs")
            out.append(f"{u / min(peers):.2f}" if u and peers else "-")
        if fuse:
            out += [" / ".join(cpus), " / ".join(rsss)]
        if "unionfs" in kinds:
            c = [float(r[5]) for r in runs.get((row, mode, "unionfs"), []) if r[5] not in ("-", "")]
            out.append(f"{median(c):.2f}" if c else "-")
        if any_du:
            out.append(" / ".join(dus) if du_row == "1" else "")
        print("| " + " | ".join(out) + " |")
if footnotes:
    print()
    for f in footnotes:
        print(f"* {f}")
EOF
}

{
  echo "### unionfs benchmark ($([ "$QUICK" = 1 ] && echo "QUICK=1, data set 10x smaller" || echo "full data set"), MODE=$MODE, RUNS=$RUNS, $(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Kernel $(uname -r), $(nproc) CPUs. Targets: ${labels[*]}."
  echo "Lowers: 3 dirs on $(findmnt -n -o FSTYPE --target "$DATA") (\`$DATA\`); upper and work dir: a fresh ext4 (journaled, loop-mounted file in /var/tmp) for every mount."
  echo "Merged tree: a Rust toolchain ($RUST_FILES files) split file by file round-robin over the 3 lowers + 10x10x$GEN_FILES_PER_DIR generated small files, also round-robin: $TREE_ENTRIES entries, nearly every dir in all 3 lowers."
  echo "Seconds, median of $RUNS; (x) = ratio to kernel overlayfs; u/peer = unionfs / best of FO1, FO2. CPU = daemon utime+stime over the pass (median), RSS = daemon peak VmHWM (max); client CPU = utime+stime of the workload's own processes on unionfs (median); upper MiB = \`du -s\` of the upper after the pass (median)."
  echo "cold: new mount, caches dropped; fresh: new mount, page cache warm; warm: second pass on the same mount. Writes are not synced unless the row says so;"
  echo "Kernel overlayfs fsyncs every file it copies up (durable copy-up); unionfs does not, and the copy-up row suggests neither fuse-overlayfs does."
  if [[ " ${sel[*]} " == *" chown-R "* ]]; then
    echo "chown-R: the generated files are under 4 KiB, so a metadata-only copy-up (kernel metacopy=on: an upper inode with no data extent, whose overlay xattrs take an external 4 KiB xattr block on ext4) uses as many upper bytes as a full data copy-up: there its gain is in time (no data read and written), not in du."
  fi
  if [ "$MODE" = both ]; then
    echo "MODE=both: the two tables come from one run, interleaved (each row and repetition: root, then rootless), over the same layers."
  fi
  for n in "${notes[@]}"; do echo "**Note:** $n."; done
  for m in "${modes[@]}"; do
    echo
    print_table "$m"
  done
  echo
  echo "Runtime of the benchmark: ${elapsed}s."
} | tee "$BENCH_OUT"
bench_log "table written to $BENCH_OUT (raw results: $(for m in "${modes[@]}"; do results_file "$m"; done | tr '\n' ' '))"
