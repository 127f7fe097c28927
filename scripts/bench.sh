#!/usr/bin/env bash
# Benchmarks unionfs against kernel overlayfs and fuse-overlayfs (1.x from
# the distribution = FO1, 2.0.0 from crates.io = FO2) over the same three
# lowers, in the same run, and prints a markdown table of medians.
#
# Needs root. Usage: scripts/bench.sh
# Environment:
#   RUNS=3        repetitions; each repetition runs every target in turn
#                 (interleaved, starting target rotated per repetition)
#   QUICK=1       data set and write sizes 10x smaller (a smoke run of minutes)
#   ONLY=REGEX    run only rows whose id matches (ids: find ls-lR ls-f dd-read
#                 tar-c create dd-write fio copy-up rm-rf untar grep make)
#   TARGETS=kernel,fo1,fo2,unionfs   targets to run, in this order
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
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench_lib.sh
bench_require_root
UNIONFS_BENCH=1 bash scripts/deps.sh

RUNS=${RUNS:-3}
QUICK=${QUICK:-0}
ONLY=${ONLY:-.}
TARGETS=${TARGETS:-kernel,fo1,fo2,unionfs}
DATA_ROOT=${DATA_ROOT:-/var/tmp/unionfs-bench-data}
RESULTS_DIR=/var/tmp/unionfs-bench-results
started=$(bench_now)

bench_log "building the release binary"
cargo build --release --quiet

# --- targets ---------------------------------------------------------------
notes=()
IFS=, read -r -a want <<<"$TARGETS"
kinds=()
for k in "${want[@]}"; do
  if [ "$k" = fo2 ] && ! bench_install_fo2; then
    notes+=("FO2 (fuse-overlayfs 2.0.0) not run: \`cargo install fuse-overlayfs --version 2.0.0\` failed (see $BENCH_TOOLS/install.log)")
    continue
  fi
  if ! bench_kind_available "$k"; then
    notes+=("$k not run: not available here")
    continue
  fi
  kinds+=("$k")
done
[ ${#kinds[@]} -gt 0 ] || bench_die "no target to run (TARGETS=$TARGETS)"

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
LOWERS=$DATA/l1:$DATA/l2:$DATA/l3

N_CREATE=$((20000 / SCALE))
WRITE_MIB=$((1024 / SCALE))
FIO_MIB=$((256 / SCALE))
if [ "$SCALE" = 1 ]; then UPPER_SIZE=3G; else UPPER_SIZE=1G; fi

bench_init /var/tmp/unionfs-bench-run
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
rows=()
declare -A R_MODES R_LABEL R_CMD R_CHECK R_PREP R_SETUP R_WARM
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

sel=()
for r in "${rows[@]}"; do [[ $r =~ $ONLY ]] && sel+=("$r"); done
[ ${#sel[@]} -gt 0 ] || bench_die "no row matches ONLY=$ONLY"

# --- measuring -------------------------------------------------------------
mkdir -p "$RESULTS_DIR"
BENCH_OUT=${BENCH_OUT:-$RESULTS_DIR/bench-$(date +%Y%m%d-%H%M%S)$([ "$QUICK" = 1 ] && echo -quick || true).md}
# Raw results (one line per timed pass), kept next to the table.
RESULTS=${BENCH_OUT%.md}.tsv
: >"$RESULTS"

new_upper() {
  bench_loop_fs "$UPPER_SIZE" "$UP"
  mkdir "$UP/upper" "$UP/work"
}
drop_upper() { bench_loop_fs_remove "$UP"; }
do_mount() { bench_mount "$1" "$LOWERS" "$UP/upper" "$UP/work" "$MNT"; }
do_umount() { bench_umount "$1" "$MNT" "$DAEMON_PID"; }

# in_mount CMD: runs CMD in the mount point, untimed; failure is fatal.
in_mount() {
  (cd "$MNT" && eval "$1") >/dev/null 2>"$BENCH_BASE/err" ||
    { cat "$BENCH_BASE/err" >&2; bench_die "untimed step failed: $1"; }
}

# timed KIND ROW MODE REP: one timed pass of ROW's command in the mount.
timed() {
  local kind=$1 row=$2 mode=$3 rep=$4 c0=0 c1=0 hwm=- cpu=- t0 t1 rc=0 check secs k0 k1 client
  sync
  if [ "$mode" = cold ]; then bench_drop_caches; fi
  [ -n "$DAEMON_PID" ] && c0=$(bench_cpu_ticks "$DAEMON_PID")
  bench_children_cpu k0
  t0=$(bench_now)
  (cd "$MNT" && eval "${R_CMD[$row]}") >"$BENCH_BASE/out" 2>"$BENCH_BASE/err" || rc=$?
  t1=$(bench_now)
  bench_children_cpu k1
  client=$(awk -v a="$k0" -v b="$k1" 'BEGIN { printf "%.2f", b - a }')
  if [ -n "$DAEMON_PID" ]; then
    c1=$(bench_cpu_ticks "$DAEMON_PID")
    cpu=$(awk -v a="$c0" -v b="$c1" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / t }')
    hwm=$(bench_hwm_kib "$DAEMON_PID")
  fi
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  check=$(head -c 200 "$BENCH_BASE/out" | tr '\t\n' '  ')
  if [ "$rc" != 0 ]; then
    echo "  $kind $row $mode: exit $rc: $(head -c 300 "$BENCH_BASE/err")" >&2
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$mode" "$kind" "$rep" "$secs" "$cpu" "${hwm:--}" "$rc" "$check" "$client" >>"$RESULTS"
  bench_log "  $row $mode $kind run $rep: ${secs}s daemon cpu ${cpu}s client cpu ${client}s rss ${hwm:--} KiB${check:+ (output: $check)}"
}

# session KIND ROW REP: every mode of ROW on KIND, each mount on a fresh upper.
session() {
  local kind=$1 row=$2 rep=$3 modes=" ${R_MODES[$2]} "
  if [[ $modes == *" cold "* ]]; then
    new_upper
    do_mount "$kind"
    [ -n "${R_PREP[$row]}" ] && in_mount "${R_PREP[$row]}"
    timed "$kind" "$row" cold "$rep"
    do_umount "$kind"
    drop_upper
  fi
  if [[ $modes == *" fresh "* || $modes == *" warm "* ]]; then
    new_upper
    if [ -n "${R_SETUP[$row]}" ]; then
      do_mount "$kind"
      in_mount "${R_SETUP[$row]}"
      do_umount "$kind"
    fi
    if [ -n "${R_WARM[$row]}" ]; then
      (cd "$DATA" && eval "${R_WARM[$row]}") >/dev/null
    fi
    do_mount "$kind"
    [ -n "${R_PREP[$row]}" ] && in_mount "${R_PREP[$row]}"
    if [[ $modes == *" fresh "* ]]; then
      timed "$kind" "$row" fresh "$rep"
    else
      in_mount "${R_CMD[$row]}"
    fi
    if [[ $modes == *" warm "* ]]; then
      timed "$kind" "$row" warm "$rep"
    fi
    do_umount "$kind"
    drop_upper
  fi
}

bench_log "data set $DATA; targets: ${kinds[*]}; rows: ${sel[*]}; RUNS=$RUNS"
for row in "${sel[@]}"; do
  for rep in $(seq "$RUNS"); do
    n=${#kinds[@]}
    for ((i = 0; i < n; i++)); do
      session "${kinds[(i + rep - 1) % n]}" "$row" "$rep"
    done
  done
done

# --- the table -------------------------------------------------------------
ROWS_META=$BENCH_BASE/rows.tsv
: >"$ROWS_META"
for row in "${sel[@]}"; do
  printf '%s\t%s\t%s\t%s\n' "$row" "${R_MODES[$row]}" "${R_LABEL[$row]}" "${R_CHECK[$row]}" >>"$ROWS_META"
done
elapsed=$(awk -v a="$started" -v b="$(bench_now)" 'BEGIN { printf "%d", b - a }')
labels=()
for k in "${kinds[@]}"; do labels+=("$k=$(bench_kind_label "$k")"); done

{
  echo "### unionfs benchmark ($([ "$QUICK" = 1 ] && echo "QUICK=1, data set 10x smaller" || echo "full data set"), RUNS=$RUNS, $(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "Kernel $(uname -r), $(nproc) CPUs. Targets: ${labels[*]}."
  echo "Lowers: 3 dirs on $(findmnt -n -o FSTYPE --target "$DATA") (\`$DATA\`); upper and work dir: a fresh ext4 (journaled, loop-mounted file in /var/tmp) for every mount."
  echo "Merged tree: a Rust toolchain ($RUST_FILES files) split file by file round-robin over the 3 lowers + 10x10x$GEN_FILES_PER_DIR generated small files, also round-robin: $TREE_ENTRIES entries, nearly every dir in all 3 lowers."
  echo "Seconds, median of $RUNS; (x) = ratio to kernel overlayfs; u/peer = unionfs / best of FO1, FO2. CPU = daemon utime+stime over the pass (median), RSS = daemon peak VmHWM (max); client CPU = utime+stime of the workload's own processes on unionfs (median)."
  echo "cold: new mount, caches dropped; fresh: new mount, page cache warm; warm: second pass on the same mount. Writes are not synced unless the row says so;"
  echo "Kernel overlayfs fsyncs every file it copies up (durable copy-up); unionfs does not, and the copy-up row suggests neither fuse-overlayfs does."
  for n in "${notes[@]}"; do echo "**Note:** $n."; done
  echo
  python3 - "$RESULTS" "$ROWS_META" "${kinds[@]}" <<'EOF'
import sys
from collections import defaultdict

results, meta, kinds = sys.argv[1], sys.argv[2], sys.argv[3:]
name = {"kernel": "kernel", "fo1": "FO1", "fo2": "FO2", "unionfs": "unionfs"}
fuse = [k for k in kinds if k != "kernel"]
runs = defaultdict(list)  # (row, mode, kind) -> [(secs, cpu, hwm, rc, check, client)]
for line in open(results):
    row, mode, kind, rep, secs, cpu, hwm, rc, check, *client = line.rstrip("\n").split("\t")
    runs[(row, mode, kind)].append((float(secs), cpu, hwm, int(rc), check, (client or ["-"])[0]))


def median(xs):
    xs = sorted(xs)
    return xs[(len(xs) - 1) // 2] if xs else None


def fmt(x):
    return "-" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


head = ["workload", "mode"] + [name[k] + " s" for k in kinds]
if "unionfs" in kinds and ("fo1" in kinds or "fo2" in kinds):
    head.append("u/peer")
if fuse:
    head += ["CPU s " + " / ".join(name[k] for k in fuse), "RSS MiB " + " / ".join(name[k] for k in fuse)]
if "unionfs" in kinds:
    head.append("client CPU s (unionfs)")
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
footnotes = []
for line in open(meta):
    row, modes, label, check = line.rstrip("\n").split("\t")
    for mode in modes.split():
        med, cells, cpus, rsss, outs = {}, [], [], [], {}
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
            if k != "kernel":
                c = [float(r[1]) for r in rs if r[1] not in ("-", "")]
                h = [int(r[2]) for r in rs if r[2] not in ("-", "")]
                cpus.append(f"{median(c):.2f}" if c else "-")
                rsss.append(f"{max(h) / 1024:.0f}" if h else "-")
        kern = med.get("kernel")
        for k in kinds:
            rs = runs.get((row, mode, k), [])
            if rs and any(r[3] != 0 for r in rs):
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
        print("| " + " | ".join(out) + " |")
if footnotes:
    print()
    for f in footnotes:
        print(f"* {f}")
EOF
  echo
  echo "Runtime of the benchmark: ${elapsed}s."
} | tee "$BENCH_OUT"
bench_log "table written to $BENCH_OUT (raw results: $RESULTS)"
