#!/usr/bin/env python3
"""The import graph among the crate's top-level modules (its folders, and
the few files left at the root), its cycles, and the edges that point up
the intended layering (docs/design.md, section 4).

    scripts/module_graph.py [--edges] [--strict] [SRC_DIR]

A file's module is its first path component under src/ (src/ops/names.rs
is `ops`, src/model/node.rs is `model`). An edge A -> B is a `crate::B`
path (or `crate::{B, ...}` group) in A's code, comments excluded; in
src/main.rs, `unionfs::B`. `crate::Error` and `crate::Result` are `error`'s
re-exports. Edges found only in a `#[cfg(test)]` module are listed apart
and left out of the cycle search: unit tests may reach anywhere.

Exit status: 1 on a cycle; with --strict (as scripts/test.sh runs it) also
on an upward edge or an unranked module; else 0.
"""

import os
import re
import sys

# Intended layers, top (0) to bottom: a module may import only from its own
# rank or below. Modules missing here are reported as unranked.
RANKS = {
    # entry: the binary and its command line
    "main": 0,
    "cli": 0,
    # the daemon: its life, the FUSE glue (fuse.rs), splice, passthrough
    "daemon": 1,
    # what a request does (ops) and, beside it, what a layer tool does
    # (tools), both over the same union rules; and the mount command line's
    # grammar and MountConfig, which cli, daemon and tools all read
    "ops": 2,
    "tools": 2,
    "mount_line": 2,
    # the union rules: lookup, readdir, whiteouts written, copy-up, the upper,
    # the work dir, the hard-link index, and the mount's numbered lookups,
    # listings and handles over them
    "union": 3,
    # the model: layers, nodes, the layer-dir fd cache and how a node is
    # reached through it, and the on-disk formats read from the layers
    # (whiteout markers, forced stats, id maps, ACLs)
    "model": 4,
    # system calls, errors and the process's mount table
    "sys": 5,
    "error": 5,
    "mountinfo": 5,
}

REEXPORTS = {"Error": "error", "Result": "error"}


def module_of(src, path):
    rel = os.path.relpath(path, src)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] if "//" in line else line for line in text.split("\n"))


def split_tests(text):
    """(code, test code): a `#[cfg(test)] mod NAME {` block runs to the end
    of the file in this crate's style."""
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return (text, "") if m is None else (text[: m.start()], text[m.start() :])


def group_heads(body):
    """Top-level names in a `{a, b::c, d::{e, f}}` group body."""
    heads, depth, cur = [], 0, ""
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            heads.append(cur)
            cur = ""
            continue
        if depth == 0:
            cur += ch
    heads.append(cur)
    return [h.strip().split("::")[0].strip() for h in heads if h.strip()]


def refs(code, root):
    found = set()
    for m in re.finditer(root + r"::\s*(\{|\w+)", code):
        if m.group(1) == "{":
            depth, i = 1, m.end()
            while depth and i < len(code):
                depth += {"{": 1, "}": -1}.get(code[i], 0)
                i += 1
            found.update(group_heads(code[m.end() : i - 1]))
        else:
            found.add(m.group(1))
    return {REEXPORTS.get(n, n) for n in found if n not in ("self", "")}


def graph(src):
    edges, test_edges = {}, {}
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            mod = module_of(src, path)
            if mod == "lib":
                continue
            with open(path, encoding="utf-8") as fh:
                code, tests = split_tests(strip_comments(fh.read()))
            root = "unionfs" if mod == "main" else "crate"
            deps = refs(code, root) - {mod}
            edges.setdefault(mod, set()).update(deps)
            test_edges.setdefault(mod, set()).update(refs(tests, root) - {mod} - deps)
    return edges, test_edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else os.path.join(os.path.dirname(__file__), "..", "src")
    edges, test_edges = graph(src)
    if "--edges" in sys.argv:
        for mod in sorted(edges):
            print(f"{mod} -> {' '.join(sorted(edges[mod]))}")
        print()
    comps = cycles(edges)
    print(f"cycles: {len(comps)}")
    for comp in comps:
        members = set(comp)
        inner = [f"{a} -> {b}" for a in comp for b in sorted(edges[a]) if b in members]
        print(f"  {{{', '.join(comp)}}}: {'; '.join(inner)}")
    unranked = sorted(m for m in edges if m not in RANKS)
    if unranked:
        print(f"unranked modules: {' '.join(unranked)}")
    up = [
        (a, b)
        for a in sorted(edges)
        for b in sorted(edges[a])
        if a in RANKS and b in RANKS and RANKS[b] < RANKS[a]
    ]
    print(f"upward edges: {len(up)}")
    for a, b in up:
        print(f"  {a} ({RANKS[a]}) -> {b} ({RANKS[b]})")
    tests = [(a, b) for a in sorted(test_edges) for b in sorted(test_edges[a])]
    if tests:
        print("test-only edges (not counted): " + ", ".join(f"{a} -> {b}" for a, b in tests))
    if comps:
        return 1
    return 1 if "--strict" in sys.argv and (up or unranked) else 0


if __name__ == "__main__":
    sys.exit(main())
