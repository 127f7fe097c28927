#!/usr/bin/env python3
"""Generates the data set of scripts/bench.sh, deterministically.

Usage: bench_data.py DEST SYSROOT SCALE

Writes three lower layers DEST/l1 (top), DEST/l2, DEST/l3 and DEST/manifest
(shell assignments: counts and sizes the benchmark labels its rows with).
SCALE is 1 for the full set, 10 for QUICK=1 (everything 10x smaller).
Same inputs (the toolchain at SYSROOT, this file, SCALE) give the same bytes.

In every lower (paths relative to the layer root):
  tree/rust/...          the Rust toolchain at SYSROOT, file by file round-robin
                         over the 3 lowers (at SCALE 10 every 10th file), each
                         directory in all three, so nearly every dir is merged
  tree/gen/dNN/sNN/fNNNN 10 x 10 x (1000 / SCALE) small files, round-robin
  wide/eNNNNN            one dir of 50000 / SCALE empty files, round-robin
  cproj/                 a C project: Makefile (l1), include/proj.h (l2),
                         src/main.c (l3), src/mNNN.c (200 / SCALE, round-robin)
and only in one lower:
  big.bin (l3)           1 GiB / SCALE of pseudo-random bytes
  src.tar (l2)           an uncompressed tarball of a generated C source tree
                         (200 / SCALE dirs x 50 files, 1-16 KiB each)
"""
import io
import os
import random
import shutil
import sys
import tarfile

dest, sysroot, scale = sys.argv[1], sys.argv[2], int(sys.argv[3])
lowers = [os.path.join(dest, f"l{i}") for i in (1, 2, 3)]
counter = 0  # global round-robin index over every regular file placed


def mkdir_all(rel):
    for lower in lowers:
        os.makedirs(os.path.join(lower, rel), exist_ok=True)


def place(rel):
    """The absolute path in the next lower (round-robin) for a file at rel;
    its parent dir is made in all three lowers."""
    global counter
    mkdir_all(os.path.dirname(rel))
    path = os.path.join(lowers[counter % 3], rel)
    counter += 1
    return path


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# 1. The toolchain, file by file.
files, dirs = [], []
for root, dnames, fnames in os.walk(sysroot):
    dnames.sort()
    rel = os.path.relpath(root, sysroot)
    dirs.append(rel)
    for name in sorted(fnames):
        files.append(os.path.normpath(os.path.join(rel, name)))
files = files[::scale]
if scale == 1:
    for d in dirs:
        mkdir_all(os.path.normpath(os.path.join("tree/rust", d)))
for rel in files:
    src = os.path.join(sysroot, rel)
    dst = place(os.path.join("tree/rust", rel))
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    else:
        shutil.copyfile(src, dst)
        st = os.stat(src)
        os.chmod(dst, st.st_mode & 0o7777)
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))

# 2. The generated small-file tree.
rng = random.Random(1)
words = [
    "alpha", "beta", "gamma", "delta", "epsilon", "lorem", "ipsum", "dolor",
    "layer", "upper", "lower", "merge", "inode", "dentry", "whiteout", "opaque",
]
gen_files = 1000 // scale
for d in range(10):
    for s in range(10):
        for f in range(gen_files):
            rel = f"tree/gen/d{d:02}/s{s:02}/f{f:04}"
            n = rng.randrange(4, 160)
            body = " ".join(rng.choice(words) for _ in range(n))
            write(place(rel), f"{rel}\n{body}\n".encode())

# 3. The wide dir.
wide = 50000 // scale
for e in range(wide):
    write(place(f"wide/e{e:05}"), b"")

# 4. The C project.
nmod = 200 // scale
mkdir_all("cproj/src")
mkdir_all("cproj/include")
write(
    os.path.join(lowers[0], "cproj/Makefile"),
    b"""CFLAGS ?= -O1 -Wall -Iinclude
SRCS := $(sort $(wildcard src/*.c))
OBJS := $(SRCS:.c=.o)
app: $(OBJS)
\t$(CC) -o $@ $(OBJS)
src/%.o: src/%.c include/proj.h
\t$(CC) $(CFLAGS) -c -o $@ $<
clean:
\trm -f app $(OBJS)
""",
)
write(
    os.path.join(lowers[1], "cproj/include/proj.h"),
    "".join(f"unsigned long m{i:03}_run(unsigned long x);\n" for i in range(nmod)).encode(),
)
write(
    os.path.join(lowers[2], "cproj/src/main.c"),
    (
        '#include <stdio.h>\n#include "proj.h"\nint main(void) {\n  unsigned long s = 0;\n'
        + "".join(f"  s += m{i:03}_run({i});\n" for i in range(nmod))
        + '  printf("%lu\\n", s);\n  return 0;\n}\n'
    ).encode(),
)
for i in range(nmod):
    out = io.StringIO()
    out.write('#include "proj.h"\n')
    for j in range(20):
        out.write(f"static unsigned long f{j}(unsigned long x) {{\n  unsigned long a = x;\n")
        for k in range(10):
            out.write(f"  a = (a * {rng.randrange(3, 99)} + (a >> {rng.randrange(1, 9)})) ^ {rng.randrange(1, 1 << 20)};\n")
        out.write("  return a;\n}\n")
    out.write(f"unsigned long m{i:03}_run(unsigned long x) {{\n  return " + " + ".join(f"f{j}(x)" for j in range(20)) + ";\n}\n")
    write(place(f"cproj/src/m{i:03}.c"), out.getvalue().encode())

# 5. The big file.
block = random.Random(2).randbytes(1 << 20)
with open(os.path.join(lowers[2], "big.bin"), "wb") as f:
    for b in range(1024 // scale):
        f.write(b.to_bytes(8, "little") + block[8:])

# 6. The source tarball (fixed order, owner, mode and times).
src_dirs, src_per_dir = 200 // scale, 50
idents = ["buf", "len", "ctx", "node", "entry", "layer", "flags", "err", "ret", "path", "fd", "ino"]
with tarfile.open(os.path.join(lowers[1], "src.tar"), "w", format=tarfile.GNU_FORMAT) as tar:

    def add(name, data=None):
        info = tarfile.TarInfo(name)
        info.mtime, info.uid, info.gid, info.uname, info.gname = 1700000000, 0, 0, "root", "root"
        if data is None:
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        else:
            info.mode, info.size = 0o644, len(data)
            tar.addfile(info, io.BytesIO(data))

    add("src")
    for d in range(src_dirs):
        add(f"src/dir{d:03}")
        for f in range(src_per_dir):
            out = io.StringIO()
            target = rng.randrange(1024, 16384)
            fn = 0
            while out.tell() < target:
                a, b = rng.choice(idents), rng.choice(idents)
                out.write(f"/* {rng.choice(words)} {rng.choice(words)} */\n")
                out.write(f"int fn_{d}_{f}_{fn}(struct {a} *{a}, int {b})\n{{\n")
                if rng.random() < 0.1:
                    out.write("\t/* TODO: handle the error path */\n")
                out.write(f"\tif ({b} < 0)\n\t\treturn -{b};\n\treturn {a}->{b} + {rng.randrange(100)};\n}}\n\n")
                fn += 1
            add(f"src/dir{d:03}/file{f:02}.c", out.getvalue().encode())

merged = set()
for lower in lowers:
    for root, dnames, fnames in os.walk(os.path.join(lower, "tree")):
        rel = os.path.relpath(root, lower)
        merged.add(rel)
        for n in dnames + fnames:
            merged.add(os.path.join(rel, n))
with open(os.path.join(dest, "manifest"), "w") as m:
    m.write(f"TREE_ENTRIES={len(merged)}\n")
    m.write(f"RUST_FILES={len(files)}\n")
    m.write(f"GEN_FILES_PER_DIR={gen_files}\n")
    m.write(f"WIDE_ENTRIES={wide}\n")
    m.write(f"C_MODULES={nmod}\n")
    m.write(f"BIG_MIB={1024 // scale}\n")
    m.write(f"SRC_FILES={src_dirs * src_per_dir}\n")
