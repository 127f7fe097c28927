//! One differential run: render a stack twice, mount kernel overlayfs and
//! unionfs over it, apply operations to both, compare after each; then the
//! end checks. Plus shrinking of a failing run and its repro script.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::common::Rng;
use crate::common::{
    as_paths, mount_args, mount_kernel_overlay, render_stack, try_mount_unionfs_args, Form, Format,
    Mount,
};
use crate::model::{LKind, StackSpec};
use crate::ops::{self, hex, shq, Op, Outcome};
use crate::tree::{self, Diff, Snap};
use crate::{expected_for, Site};

/// Kernel overlayfs options: `redirect_dir=on` so that renaming a merged or
/// lower dir succeeds as in unionfs (without it the kernel answers EXDEV);
/// `index=on` so hard links survive copy-up as in unionfs.
pub const KERNEL_OPTS: &[&str] = &["redirect_dir=on", "index=on"];

/// `UNIONFS_DIFF_METACOPY=1`: both sides copy up metadata only where they
/// can (kernel `metacopy=on`, unionfs `-o metacopy=on`).
pub fn metacopy() -> bool {
    std::env::var("UNIONFS_DIFF_METACOPY").is_ok_and(|v| v == "1")
}

/// [`KERNEL_OPTS`], with `metacopy=on` in metacopy mode.
pub fn kernel_opts() -> Vec<&'static str> {
    let mut v = KERNEL_OPTS.to_vec();
    if metacopy() {
        v.push("metacopy=on");
    }
    v
}

/// `metacopy=on` for the kernel in metacopy mode, else nothing.
fn metacopy_opt() -> Vec<&'static str> {
    kernel_opts().split_off(KERNEL_OPTS.len())
}

/// unionfs's options besides the layers. In metacopy mode the upper is
/// always in the overlay format: the OCI format has no metacopy, and its
/// whole copies would differ from the kernel's metacopies where the kernel
/// differs from itself (its metacopy's mtime becomes the time its bytes
/// are copied up).
fn unionfs_opts(write_format: &str) -> Vec<&str> {
    if metacopy() {
        return vec!["--format", "overlay", "-o", "metacopy=on"];
    }
    vec!["--format", write_format]
}

/// `unionfs mount`, once: `unionfs umount` returns only after the previous
/// daemon of the same upper has exited, so its lock is always free here.
fn mount_unionfs(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path, extra: &[&str]) -> Mount {
    let args = mount_args(Form::Mount, lowers, Some(upper), Some(work), mnt, extra);
    match try_mount_unionfs_args(&args, mnt) {
        Ok(m) => m,
        Err(e) => panic!("{e}"),
    }
}

/// Where in a run a divergence showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The merged view before any operation.
    Initial,
    /// After operation `i` (0-based).
    Op(usize),
    /// An end-of-run check.
    End,
}

#[derive(Clone, Debug)]
pub struct Divergence {
    pub step: Step,
    /// outcome, tree, invariant, lowers, remount, remount-ino,
    /// kernel-reads-upper, harness
    pub class: &'static str,
    /// Kind of the operation it showed after ("-" for none).
    pub op_kind: String,
    /// The fields that differ (tree-like classes), most telling first.
    pub fields: Vec<&'static str>,
    pub details: Vec<String>,
}

/// Diff fields, most telling first (the first present names a failure).
const FIELD_ORDER: &[&str] = &[
    "presence",
    "type",
    "errors",
    "content",
    "size",
    "hard links (same st_ino as)",
    "nlink",
    "symlink target",
    "xattrs",
    "owner",
    "mode",
    "mtime",
    "dir nlink",
];

impl Divergence {
    /// The field that names the failure, if any.
    fn primary(&self) -> Option<&'static str> {
        self.fields.first().copied()
    }

    /// How failures are grouped: class, main field, operation.
    pub fn signature(&self) -> String {
        match self.primary() {
            Some(f) => format!("{}[{}] after {}", self.class, f, self.op_kind),
            None => format!("{} after {}", self.class, self.op_kind),
        }
    }

    /// Shrinking keeps a smaller run if it fails like `first`: same class
    /// and operation, and the same main field among those that differ.
    pub fn same_failure(&self, first: &Divergence) -> bool {
        self.class == first.class
            && self.op_kind == first.op_kind
            && match first.primary() {
                Some(f) => self.fields.contains(&f),
                None => true,
            }
    }
}

#[derive(Debug, Default)]
pub struct RunResult {
    /// Operations executed (the last one is where the divergence showed).
    pub ops: Vec<Op>,
    pub divergence: Option<Divergence>,
    /// Ids of expected differences met (each tolerated once per meeting).
    pub tolerated: Vec<&'static str>,
    /// Set when an expected outcome difference made the two mounts
    /// incomparable and the run stopped early.
    pub ended_by: Option<&'static str>,
    /// Per operation kind: (succeeded, failed) on kernel overlayfs.
    pub outcomes: BTreeMap<&'static str, (usize, usize)>,
}

pub enum Source<'a> {
    /// `n` operations generated as the run goes, none of a kind in `skip`.
    Random {
        rng: &'a mut Rng,
        n: usize,
        skip: &'a [String],
    },
    Fixed(&'a [Op]),
}

fn mkdirs(root: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|n| {
            let p = root.join(n);
            fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
            p
        })
        .collect()
}

fn outcome_str(o: &Outcome) -> String {
    match o {
        Ok(v) => format!("ok ({v})"),
        Err(e) => tree::errno_name(*e),
    }
}

/// Splits diffs into (unexpected, ids of the expected ones).
fn filter_diffs(
    check: &'static str,
    op: Option<&Op>,
    diffs: Vec<Diff>,
) -> (Vec<Diff>, Vec<&'static str>) {
    let mut left = Vec::new();
    let mut ids = Vec::new();
    for d in diffs {
        let site = Site::Tree {
            check,
            op,
            diff: &d,
        };
        match expected_for(&site) {
            Some(id) => ids.push(id),
            None => left.push(d),
        }
    }
    (left, ids)
}

fn tree_divergence(
    step: Step,
    class: &'static str,
    op: Option<&Op>,
    header: &str,
    diffs: &[Diff],
) -> Divergence {
    let mut details = vec![header.to_string()];
    details.extend(diffs.iter().take(40).map(|d| d.line()));
    if diffs.len() > 40 {
        details.push(format!("... and {} more", diffs.len() - 40));
    }
    let mut fields: Vec<&'static str> = diffs.iter().map(|d| d.field).collect();
    fields.sort_by_key(|f| FIELD_ORDER.iter().position(|x| x == f).unwrap_or(0));
    fields.dedup();
    Divergence {
        step,
        class,
        op_kind: op.map_or("-".to_string(), |o| o.kind().to_string()),
        fields,
        details,
    }
}

/// Runs one sequence in a fresh dir `base/tag`, removed afterwards. Never
/// panics: a panic of the harness (a mount that fails...) is a divergence
/// of class `harness`.
pub fn run(base: &Path, tag: &str, spec: &StackSpec, src: Source) -> RunResult {
    let root = base.join(tag);
    let mut result = RunResult::default();
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        run_inner(&root, spec, src, &mut result)
    }));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "<panic>".to_string());
        result.divergence = Some(Divergence {
            step: Step::End,
            class: "harness",
            op_kind: result.ops.last().map_or("-".into(), |o| o.kind().into()),
            fields: Vec::new(),
            details: vec![format!("the harness panicked: {msg}")],
        });
    }
    if let Err(e) = fs::remove_dir_all(&root) {
        eprintln!("differential: WARNING: remove {}: {e}", root.display());
    }
    result
}

fn run_inner(root: &Path, spec: &StackSpec, src: Source, result: &mut RunResult) {
    fs::create_dir_all(root).expect("mkdir run dir");
    let layers = spec.to_layers();
    let kl = render_stack(&layers, &root.join("kl"), Format::Kernel);
    let ul = render_stack(&layers, &root.join("ul"), spec.unionfs_format);
    let d = mkdirs(root, &["kup", "kwork", "kmnt", "uup", "uwork", "umnt"]);
    let (kup, kwork, kmnt, uup, uwork, umnt) = (&d[0], &d[1], &d[2], &d[3], &d[4], &d[5]);
    let lower_dirs: Vec<PathBuf> = kl.iter().chain(ul.iter()).cloned().collect();
    let lowers_before: Vec<Snap> = lower_dirs
        .iter()
        .map(|l| tree::snap_with(l, true))
        .collect();

    let km = mount_kernel_overlay(&as_paths(&kl), Some(kup), Some(kwork), kmnt, &kernel_opts());
    let uargs = unionfs_opts(spec.write_format);
    let um = mount_unionfs(&as_paths(&ul), uup, uwork, umnt, &uargs);

    let mut ks = tree::snap(kmnt);
    let mut us = tree::snap(umnt);
    let header = "(left: kernel overlayfs, right: unionfs)";
    let check = |ks: &Snap, us: &Snap, step: Step, op: Option<&Op>, result: &mut RunResult| {
        let (diffs, ids) = filter_diffs("view", op, tree::compare(ks, us));
        result.tolerated.extend(ids);
        if !diffs.is_empty() {
            return Some(tree_divergence(step, "tree", op, header, &diffs));
        }
        let (inv, ids) = filter_diffs("invariant", op, tree::unionfs_invariants(us));
        result.tolerated.extend(ids);
        if !inv.is_empty() {
            return Some(tree_divergence(
                step,
                "invariant",
                op,
                "unionfs's own promise",
                &inv,
            ));
        }
        None
    };
    result.divergence = check(&ks, &us, Step::Initial, None, result);

    let (mut rng, n, fixed, skip) = match src {
        Source::Random { rng, n, skip } => (Some(rng), n, None, skip),
        Source::Fixed(ops) => (None, ops.len(), Some(ops), &[][..]),
    };
    let mut i = 0;
    while result.divergence.is_none() && i < n {
        let op = match (&mut rng, fixed) {
            (Some(rng), _) => ops::generate(rng, &ks, skip),
            (None, Some(ops)) => ops[i].clone(),
            _ => unreachable!(),
        };
        let ko = op.exec(kmnt);
        let uo = op.exec(umnt);
        result.ops.push(op.clone());
        let c = result.outcomes.entry(op.kind()).or_default();
        if ko.is_ok() {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        if ko != uo {
            let site = Site::Outcome {
                op: &op,
                kernel: &ko,
                unionfs: &uo,
            };
            if let Some(id) = expected_for(&site) {
                result.tolerated.push(id);
                result.ended_by = Some(id);
                break;
            }
            result.divergence = Some(Divergence {
                step: Step::Op(i),
                class: "outcome",
                op_kind: op.kind().to_string(),
                fields: Vec::new(),
                details: vec![format!(
                    "`{}`: kernel overlayfs {}, unionfs {}",
                    op.shell(),
                    outcome_str(&ko),
                    outcome_str(&uo)
                )],
            });
            break;
        }
        ks = tree::snap(kmnt);
        us = tree::snap(umnt);
        result.divergence = check(&ks, &us, Step::Op(i), Some(&op), result);
        i += 1;
    }

    // End checks: they compare unionfs with itself or read its layers, so
    // they run even after an expected difference (with a fresh view).
    if result.ended_by.is_some() {
        us = tree::snap(umnt);
    }
    km.umount();
    um.umount();
    if result.divergence.is_some() {
        return;
    }
    // End checks do not blame the last operation (shrinking keeps failures
    // of the same check, whatever operation comes last).
    let last = "end".to_string();
    let end = |class: &'static str, details: Vec<String>| Divergence {
        step: Step::End,
        class,
        op_kind: last.clone(),
        fields: Vec::new(),
        details,
    };
    let mut changed = Vec::new();
    for (dir, before) in lower_dirs.iter().zip(&lowers_before) {
        for c in tree::layer_changes(before, &tree::snap_with(dir, true)) {
            changed.push(format!("{}: {c}", dir.display()));
        }
    }
    if !changed.is_empty() {
        result.divergence = Some(end("lowers", changed));
        return;
    }

    // The offline tools (`unionfs ls`, `which`, ...) read the unmounted
    // layers by the mount's own rules: they see what the mount showed.
    let offline = tree::offline_snap(&as_paths(&ul), uup, uwork);
    let (diffs, ids) = filter_diffs("offline", None, tree::compare_offline(&us, &offline));
    result.tolerated.extend(ids);
    if !diffs.is_empty() {
        let h = "(left: unionfs mounted, right: the offline tools' view of its layers)";
        let mut dv = tree_divergence(Step::End, "offline", None, h, &diffs);
        dv.op_kind = last;
        result.divergence = Some(dv);
        return;
    }

    // The upper persists: a new mount over the same dirs shows the same
    // view, with the same inode numbers for files and dirs (docs/design.md §3).
    let um2 = mount_unionfs(&as_paths(&ul), uup, uwork, umnt, &uargs);
    let us2 = tree::snap(umnt);
    um2.umount();
    let (diffs, ids) = filter_diffs("remount", None, tree::compare(&us, &us2));
    result.tolerated.extend(ids);
    if !diffs.is_empty() {
        let h = "(left: unionfs before unmount, right: unionfs remounted)";
        result.divergence = Some(tree_divergence(Step::End, "remount", None, h, &diffs));
        result.divergence.as_mut().expect("set").op_kind = last;
        return;
    }
    let mut ino = Vec::new();
    for (p, a) in &us {
        let Some(b) = us2.get(p) else { continue };
        let kind_ok = matches!(
            a.ftype,
            Some(crate::common::FileType::File) | Some(crate::common::FileType::Dir)
        );
        if kind_ok && a.ino != b.ino {
            ino.push(Diff {
                path: p.clone(),
                field: "st_ino across remount",
                is_dir: a.ftype == Some(crate::common::FileType::Dir),
                left: a.ino.to_string(),
                right: b.ino.to_string(),
            });
        }
    }
    let (ino, ids) = filter_diffs("remount-ino", None, ino);
    result.tolerated.extend(ids);
    if !ino.is_empty() {
        let h = "(left: unionfs before unmount, right: unionfs remounted)";
        let mut dv = tree_divergence(Step::End, "remount-ino", None, h, &ino);
        dv.op_kind = last;
        result.divergence = Some(dv);
        return;
    }

    // An upper written in overlay format mounts under kernel overlayfs
    // (docs/design.md §2) and shows the same view. Its hard-link index lives in
    // unionfs's work dir, which the kernel does not read: skipped when the
    // lowers have hard links.
    if (spec.write_format == "overlay" || metacopy()) && !spec.has_links() {
        let d2 = mkdirs(root, &["kwork2", "kmnt2"]);
        let km2 = mount_kernel_overlay(
            &as_paths(&kl),
            Some(uup),
            Some(&d2[0]),
            &d2[1],
            &[&["redirect_dir=on", "index=off"][..], &metacopy_opt()].concat(),
        );
        let ks2 = tree::snap(&d2[1]);
        km2.umount();
        let (diffs, ids) = filter_diffs("kernel-reads-upper", None, tree::compare(&us, &ks2));
        result.tolerated.extend(ids);
        if !diffs.is_empty() {
            let h = "(left: unionfs, right: kernel overlayfs mounting unionfs's upper)";
            let mut dv = tree_divergence(Step::End, "kernel-reads-upper", None, h, &diffs);
            dv.op_kind = last;
            result.divergence = Some(dv);
        }
    }
}

// ---------------------------------------------------------------------------
// Shrinking

/// A failing run made small: the stack and operations left, and how it fails.
pub struct Shrunk {
    pub spec: StackSpec,
    pub ops: Vec<Op>,
    pub divergence: Divergence,
    pub replays: usize,
    pub reproduced: bool,
}

/// Delta debugging: removes chunks of operations (halves down to single
/// ones), then layer entries, keeping each removal after which a replay on
/// fresh mounts still fails the same way ([`Divergence::same_failure`]),
/// within `budget_secs`.
pub fn shrink(
    base: &Path,
    tag: &str,
    spec: &StackSpec,
    ops: &[Op],
    first: &Divergence,
    budget_secs: u64,
) -> Shrunk {
    let start = Instant::now();
    let mut replays = 0;
    let mut fails = |spec: &StackSpec, ops: &[Op]| -> Option<Divergence> {
        replays += 1;
        let r = run(base, &format!("{tag}-r{replays}"), spec, Source::Fixed(ops));
        r.divergence.filter(|d| d.same_failure(first))
    };
    let mut spec = spec.clone();
    let mut ops = ops.to_vec();
    let Some(mut div) = fails(&spec, &ops) else {
        return Shrunk {
            spec,
            ops,
            divergence: first.clone(),
            replays,
            reproduced: false,
        };
    };
    let out_of_time = |start: &Instant| start.elapsed().as_secs() >= budget_secs;
    for _round in 0..2 {
        let before = (ops.len(), spec.entry_count());
        // Operations.
        let mut chunk = ops.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < ops.len() && !out_of_time(&start) {
                let mut cand = ops.clone();
                let end = (i + chunk).min(cand.len());
                cand.drain(i..end);
                match fails(&spec, &cand) {
                    Some(d) => {
                        // A replay stops at its divergence: drop the rest.
                        let executed = match d.step {
                            Step::Op(j) => j + 1,
                            Step::Initial => 0,
                            Step::End => cand.len(),
                        };
                        cand.truncate(executed);
                        ops = cand;
                        div = d;
                    }
                    None => i += chunk,
                }
            }
            if chunk == 1 || out_of_time(&start) {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        // Layer entries (one at a time, deepest first so dirs empty out).
        let mut keys = spec.entry_keys();
        keys.sort_by_key(|(_, p)| std::cmp::Reverse(p.iter().filter(|&&c| c == b'/').count()));
        for (li, p) in keys {
            if out_of_time(&start) {
                break;
            }
            if !spec.layers[li].entries.contains_key(&p) {
                continue;
            }
            let mut cand = spec.clone();
            cand.layers[li].remove(&p);
            if let Some(d) = fails(&cand, &ops) {
                spec = cand;
                div = d;
            }
        }
        // Empty layers (keep one).
        let mut li = 0;
        while spec.layers.len() > 1 && li < spec.layers.len() && !out_of_time(&start) {
            if spec.layers[li].entries.is_empty() {
                let mut cand = spec.clone();
                cand.layers.remove(li);
                if let Some(d) = fails(&cand, &ops) {
                    spec = cand;
                    div = d;
                    continue;
                }
            }
            li += 1;
        }
        if (ops.len(), spec.entry_count()) == before || out_of_time(&start) {
            break;
        }
    }
    Shrunk {
        spec,
        ops,
        divergence: div,
        replays,
        reproduced: true,
    }
}

// ---------------------------------------------------------------------------
// Repro scripts

/// The helper the repro scripts call as `op NAME ARGS...`: each operation as
/// the harness makes it (same flags), printing `ok VALUE` or the errno name;
/// `op view DIR` prints a merged tree the way the harness compares it.
const OP_PY: &str = r#"import os, sys, errno, ctypes, hashlib, stat
libc = ctypes.CDLL(None, use_errno=True)
def chk(r):
    if r < 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def data(pre, ch, n):
    p = b'' if pre == '-' else bytes.fromhex(pre)
    c = b'' if ch == '-' else bytes.fromhex(ch)
    n = int(n)
    return p + ((c * (n // len(c) + 1))[:n] if c else b'')
def pwrite_all(fd, d, off):
    while d:
        k = os.pwrite(fd, d, off); d = d[k:]; off += k
def rmrf(p, top=True):
    try:
        st = os.lstat(p)
        if stat.S_ISDIR(st.st_mode):
            n = sum(rmrf(os.path.join(p, x), False) for x in sorted(os.listdir(p)))
            os.rmdir(p); return n + 1
        os.unlink(p); return 1
    except FileNotFoundError:
        if top: raise
        return 0
def entry(p, rel, groups):
    # Same calls in the same order as the harness's snapshot.
    try:
        st = os.lstat(p)
    except OSError as e:
        return None, '%s lstat:%s' % (rel, errno.errorcode.get(e.errno, e.errno))
    t = stat.S_IFMT(st.st_mode)
    s = '%s %o %o %d:%d' % (rel, t >> 12, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    try:
        s += ' nlink=%d' % st.st_nlink
        if not stat.S_ISDIR(st.st_mode):
            s += ' size=%d' % st.st_size
            s += ' inode#%d' % groups.setdefault(st.st_ino, len(groups))
        if stat.S_ISREG(st.st_mode):
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, 'rb') as f:
                s += ' sha1=' + hashlib.sha1(f.read()).hexdigest()[:12]
        if stat.S_ISLNK(st.st_mode):
            s += ' -> ' + os.readlink(p)
        if st.st_mtime < 1600000000:
            s += ' mtime=%d' % st.st_mtime_ns
        for k in os.listxattr(p, follow_symlinks=False):
            if k.startswith('user.'):
                s += ' %s=%s' % (k, os.getxattr(p, k, follow_symlinks=False).hex())
    except OSError as e:
        s += ' error:%s' % errno.errorcode.get(e.errno, e.errno)
    return st, s
def view(root):
    groups, lines, todo = {}, [], ['']
    while todo:
        rel = todo.pop()
        for x in os.listdir(os.path.join(root, rel) if rel else root):
            crel = rel + '/' + x if rel else x
            st, line = entry(os.path.join(root, crel), crel, groups)
            lines.append(line)
            if st is not None and stat.S_ISDIR(st.st_mode):
                todo.append(crel)
    # Inode groups numbered in path order, so two views compare.
    lines.sort()
    ren = {}
    out = []
    for l in lines:
        parts = l.split(' ')
        for i, w in enumerate(parts):
            if w.startswith('inode#'):
                parts[i] = 'inode#%d' % ren.setdefault(w, len(ren))
        out.append(' '.join(parts))
    print('\n'.join(out))
a = sys.argv[1:]
c = a[0]
NB = os.O_NONBLOCK
try:
    r = 0
    if c == 'create':
        fl = os.O_WRONLY | os.O_CREAT | NB | (os.O_EXCL if 'x' in a[3] else 0) | (os.O_TRUNC if 't' in a[3] else 0)
        fd = os.open(a[1], fl, int(a[2], 8)); d = data(*a[4:7]); pwrite_all(fd, d, 0); os.close(fd); r = len(d)
    elif c == 'write':
        fd = os.open(a[1], os.O_WRONLY | NB); d = data(*a[3:6]); pwrite_all(fd, d, int(a[2])); os.close(fd); r = len(d)
    elif c == 'append':
        fd = os.open(a[1], os.O_WRONLY | os.O_APPEND | NB); d = data(*a[2:5]); r = len(d)
        while d:
            d = d[os.write(fd, d):]
        os.close(fd)
    elif c == 'opentrunc':
        fd = os.open(a[1], os.O_WRONLY | os.O_TRUNC | NB); d = data(*a[2:5]); pwrite_all(fd, d, 0); os.close(fd); r = len(d)
    elif c == 'truncate': os.truncate(a[1], int(a[2]))
    elif c == 'mkdir': os.mkdir(a[1], int(a[2], 8))
    elif c == 'rmdir': os.rmdir(a[1])
    elif c == 'unlink': os.unlink(a[1])
    elif c == 'rmrf': r = rmrf(a[1])
    elif c == 'rename':
        f = {'0': 0, 'noreplace': 1, 'exchange': 2}[a[3]]
        chk(libc.renameat2(-100, os.fsencode(a[1]), -100, os.fsencode(a[2]), f))
    elif c == 'link': os.link(a[1], a[2], follow_symlinks=False)
    elif c == 'symlink': os.symlink(a[1], a[2])
    elif c == 'chmod': chk(libc.syscall(452, -100, os.fsencode(a[1]), int(a[2], 8), 0x100))  # fchmodat2
    elif c == 'chown': os.lchown(a[1], int(a[2]), int(a[3]))
    elif c == 'utimes':
        if a[2] == 'now': os.utime(a[1], follow_symlinks=False)
        else:
            t = int(a[2]) * 10**9 + int(a[3]); os.utime(a[1], ns=(t, t), follow_symlinks=False)
    elif c == 'setxattr':
        v = b'' if a[3] == '-' else bytes.fromhex(a[3])
        f = {'0': 0, 'create': os.XATTR_CREATE, 'replace': os.XATTR_REPLACE}[a[4]]
        os.setxattr(a[1], a[2], v, f, follow_symlinks=False)
    elif c == 'removexattr': os.removexattr(a[1], a[2], follow_symlinks=False)
    elif c == 'mkfifo': os.mkfifo(a[1], int(a[2], 8))
    elif c == 'mkfile':
        with open(a[1], 'xb') as f: f.write(data(*a[2:5]))
    elif c == 'view':
        view(a[1]); sys.exit(0)
    else:
        sys.exit('unknown op ' + c)
    print('ok', r)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"#;

/// Shell commands that recreate the layer dir `dir` byte for byte (types,
/// contents, hard links, xattrs of every namespace, owners, modes, mtimes),
/// relative to the current dir, named `name`.
fn dump_layer(
    dir: &Path,
    name: &str,
    spec_files: &BTreeMap<Vec<u8>, crate::model::Data>,
) -> Vec<String> {
    let s = tree::snap_with(dir, true);
    let mut out = vec![format!("mkdir {}", shq(name.as_bytes()))];
    let mut first_of_ino: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut meta = Vec::new();
    let mut times = Vec::new();
    let at = |p: &[u8]| {
        let mut v = name.as_bytes().to_vec();
        if !p.is_empty() {
            v.push(b'/');
            v.extend_from_slice(p);
        }
        shq(&v)
    };
    for (p, e) in &s {
        let q = at(p);
        let full = crate::common::join(dir, p);
        use crate::common::FileType as T;
        match e.ftype {
            Some(T::Dir) if p.is_empty() => {}
            Some(T::Dir) => out.push(format!("mkdir {q}")),
            Some(T::File) => {
                if let Some(first) = first_of_ino.get(&e.ino) {
                    out.push(format!("ln {} {q}", at(first)));
                    continue;
                }
                first_of_ino.insert(e.ino, p.clone());
                match spec_files.get(p) {
                    Some(d) if e.size > 0 => out.push(format!(
                        "op mkfile {q} {} {} {} >/dev/null",
                        hex(&d.prefix),
                        hex(&d.chunk),
                        d.len
                    )),
                    _ => {
                        let bytes = fs::read(&full).unwrap_or_default();
                        out.push(format!("op mkfile {q} {} - 0 >/dev/null", hex(&bytes)))
                    }
                }
            }
            Some(T::Symlink) => out.push(format!(
                "ln -s {} {q}",
                shq(e.target.as_deref().unwrap_or(b""))
            )),
            Some(T::Fifo) => out.push(format!("mkfifo {q}")),
            Some(T::CharDev) | Some(T::BlockDev) => {
                let rdev = fs::symlink_metadata(&full).map(|m| m.rdev()).unwrap_or(0);
                let t = if e.ftype == Some(T::CharDev) {
                    "c"
                } else {
                    "b"
                };
                out.push(format!(
                    "mknod {q} {t} {} {}",
                    libc::major(rdev),
                    libc::minor(rdev)
                ));
            }
            _ => out.push(format!("# {q}: {:?} not recreated", e.ftype)),
        }
        let is_link = e.ftype == Some(T::Symlink);
        for (k, v) in &e.xattrs {
            let h = if is_link { "-h " } else { "" };
            if v.is_empty() {
                meta.push(format!("setfattr {h}-n {} {q}", shq(k)));
            } else {
                meta.push(format!("setfattr {h}-n {} -v 0x{} {q}", shq(k), hex(v)));
            }
        }
        if !p.is_empty() {
            meta.push(format!("chown -h {}:{} {q}", e.uid, e.gid));
        }
        if !is_link && !p.is_empty() {
            meta.push(format!("chmod {:o} {q}", e.mode));
        }
        if !p.is_empty() {
            times.push((
                p.iter().filter(|&&c| c == b'/').count(),
                format!("touch -h -m -d @{}.{:09} {q}", e.mtime.0, e.mtime.1),
            ));
        }
    }
    times.sort_by_key(|(d, _)| std::cmp::Reverse(*d));
    out.extend(meta);
    out.extend(times.into_iter().map(|(_, t)| t));
    out
}

fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Umask:"))
                .and_then(|l| u32::from_str_radix(l[6..].trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// A self-contained bash script (run as root) that recreates both renderings
/// of the stack, mounts kernel overlayfs and unionfs, runs the operations on
/// both, printing each outcome, and diffs the two views.
pub fn repro_script(base: &Path, tag: &str, spec: &StackSpec, ops: &[Op], title: &str) -> String {
    let root = base.join(format!("{tag}-repro"));
    let layers = spec.to_layers();
    let kl = render_stack(&layers, &root.join("k"), Format::Kernel);
    let ul = render_stack(&layers, &root.join("u"), spec.unionfs_format);
    let mut s = String::new();
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line("#!/bin/bash");
    for t in title.lines() {
        line(&format!("# {t}"));
    }
    line("# Run as root. Kernel overlayfs is the reference; unionfs should match it.");
    line("# (The diffs may also show the differences tests/differential.rs expects,");
    line("# EXPECTED_DIFFERENCES: e.g. dir nlink 1 for a dir one side merges.)");
    line("set -u");
    line(&format!(
        "UNIONFS=${{UNIONFS:-{}}}",
        crate::common::unionfs_bin()
    ));
    // On a tmpfs, like the harness (some bugs depend on inode numbers).
    line("T=$(mktemp -d /tmp/unionfs-repro.XXXXXX)");
    line("mount -t tmpfs -o size=1g tmpfs \"$T\" || exit 1; cd \"$T\"");
    line(
        "trap 'cd /; umount \"$T/k/mnt\" \"$T/k2/mnt\" 2>/dev/null; \"$UNIONFS\" umount \"$T/u/mnt\" \
         2>/dev/null; sleep 0.3; umount \"$T\"; rmdir \"$T\"' EXIT",
    );
    line(&format!("umask {:03o}", umask()));
    line("cat > op.py <<'PY'");
    s.push_str(OP_PY);
    let mut line = |l: &str| {
        s.push_str(l);
        s.push('\n');
    };
    line("PY");
    line("op() { python3 \"$T/op.py\" \"$@\"; }");
    line("mkdir -p k/lowers u/lowers k/upper k/work k/mnt u/upper u/work u/mnt");
    for (side, dirs) in [("k", &kl), ("u", &ul)] {
        line(&format!(
            "# lowers rendered for {}",
            if side == "k" {
                "kernel overlayfs (kernel format)".to_string()
            } else {
                format!("unionfs ({:?})", spec.unionfs_format)
            }
        ));
        line(&format!("cd {side}/lowers"));
        for (i, d) in dirs.iter().enumerate() {
            let files: BTreeMap<Vec<u8>, crate::model::Data> = spec.layers[i]
                .entries
                .iter()
                .filter_map(|(p, e)| match &e.kind {
                    LKind::File(d) => Some((p.clone(), d.clone())),
                    _ => None,
                })
                .collect();
            for l in dump_layer(d, &spec.layers[i].name, &files) {
                line(&l);
            }
        }
        line("cd \"$T\"");
    }
    let names: Vec<&str> = spec.layers.iter().map(|l| l.name.as_str()).collect();
    let klist: Vec<String> = names.iter().map(|n| format!("$T/k/lowers/{n}")).collect();
    let ulist: Vec<String> = names.iter().map(|n| format!("$T/u/lowers/{n}")).collect();
    line(&format!(
        "mount -t overlay overlay -o lowerdir={},upperdir=$T/k/upper,workdir=$T/k/work,{} $T/k/mnt || exit 1",
        klist.join(":"),
        kernel_opts().join(",")
    ));
    line(&format!(
        "\"$UNIONFS\" mount -l {} -u $T/u/upper -w $T/u/work {} $T/u/mnt || exit 1",
        ulist.join(":"),
        unionfs_opts(spec.write_format).join(" ")
    ));
    // The harness reads the whole tree before and after each operation
    // (some bugs need the objects looked up first): so does the script.
    line("ops() {");
    line("  op view . >/dev/null");
    for o in ops {
        line(&format!(
            "  echo -n '{}: '; {}; op view . >/dev/null",
            o.shell().replace('\'', ""),
            o.shell()
        ));
    }
    line("}");
    line("echo '== kernel overlayfs'; (cd k/mnt && ops) > k.out; cat k.out");
    line("echo '== unionfs'; (cd u/mnt && ops) > u.out; cat u.out");
    line("echo '== outcomes (kernel vs unionfs)'; diff k.out u.out && echo same");
    line(
        "echo '== views (kernel vs unionfs)'; diff <(op view k/mnt) <(op view u/mnt) && echo same",
    );
    // The end checks: remount, and (overlay format) kernel overlayfs
    // reading unionfs's upper.
    let umount_cmd = "\"$UNIONFS\" umount $T/u/mnt; for i in 1 2 3 4 5; do \
                      [ -z \"$(pgrep -f \"$T/u/mnt\")\" ] && break; sleep 0.2; done";
    line("op view u/mnt > u.view");
    line(umount_cmd);
    line(&format!(
        "\"$UNIONFS\" mount -l {} -u $T/u/upper -w $T/u/work --format {} $T/u/mnt || exit 1",
        ulist.join(":"),
        spec.write_format
    ));
    line("echo '== unionfs before vs after a remount'; diff u.view <(op view u/mnt) && echo same");
    line(umount_cmd);
    if spec.write_format == "overlay" {
        line("mkdir -p k2/work k2/mnt");
        line(&format!(
            "mount -t overlay overlay -o lowerdir={},upperdir=$T/u/upper,workdir=$T/k2/work,\
             redirect_dir=on,index=off $T/k2/mnt || exit 1",
            klist.join(":")
        ));
        line(
            "echo '== unionfs vs kernel overlayfs mounting unionfs'\\''s upper'; \
             diff u.view <(op view k2/mnt) && echo same",
        );
        line("umount $T/k2/mnt");
    }
    let _ = fs::remove_dir_all(&root);
    s
}
