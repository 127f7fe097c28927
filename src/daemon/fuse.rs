//! The FUSE glue: each handler converts the kernel's arguments, calls
//! [`ops`](crate::ops), and replies. Mounting and the daemon's life are in
//! [`daemon`](crate::daemon).

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, PipeData,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use log::{debug, info, warn};

use crate::daemon::passthrough::Passthrough;
use crate::daemon::splice;
use crate::error::Error;
use crate::ops::{Attr, Caller, MayCopy, NewObject, SetAttr, UnionFs};
use crate::sys;
use crate::sys::SetTime;

/// How long the kernel may cache names and attributes. Lowers never change
/// under a mount and the upper changes only through us, so this can be long.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// At most this many long requests run on threads of their own at once;
/// more wait their turn on a FUSE worker.
const MAX_LONG: usize = 64;

/// The filesystem handed to fuser (a clone is a handle on the same mount).
#[derive(Clone)]
pub struct FuseFs {
    fs: Arc<UnionFs>,
    /// The kernel may serve opens from the layer's file itself (FUSE
    /// passthrough, kernel 6.9+, CAP_SYS_ADMIN); decided at init.
    passthrough: bool,
    /// Which inodes' open files are served by the kernel.
    io: Arc<Passthrough<BackingId>>,
    /// Long requests running on threads of their own.
    long: Arc<AtomicUsize>,
    /// Tells the kernel a cached answer is wrong; set once the session is.
    notifier: Arc<OnceLock<Notifier>>,
    transport: Transport,
}

/// How requests reach the daemon, as the mount command chose.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transport {
    /// Ask for FUSE over io_uring when the kernel offers it (`-o io_uring=on`).
    pub io_uring: bool,
    /// Receive requests by splice, a big WRITE's data spliced on into the
    /// upper file (`-o splice_write=on`; the session's `splice_writes`).
    pub splice_write: bool,
}

impl FuseFs {
    pub fn new(fs: Arc<UnionFs>, transport: Transport) -> FuseFs {
        FuseFs {
            fs,
            passthrough: false,
            io: Arc::default(),
            long: Arc::default(),
            notifier: Arc::default(),
            transport,
        }
    }

    /// Where the daemon, once the session exists, hands its notifier.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// How long the kernel may keep the attributes of `ino`. A file served
    /// by passthrough changes without us when it is written through a
    /// shared mapping (the page faults reach the layer's file, never the
    /// daemon), so while it is open that way every stat asks.
    fn attr_ttl(&self, ino: u64) -> Duration {
        if self.passthrough && self.io.through(ino) {
            Duration::ZERO
        } else {
            TTL
        }
    }

    /// A writable open served by passthrough: the attributes the kernel
    /// holds from before (kept for TTL) stop being the truth at its first
    /// write through a mapping, so drop them (`attr_ttl` keeps later
    /// answers from being kept while it is open).
    fn passthrough_writable(&self, ino: u64, flags: i32) {
        if flags & libc::O_ACCMODE == libc::O_RDONLY {
            return;
        }
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                debug!("inval_inode {ino}: {e}");
            }
        }
    }

    /// Answers a READ by splicing from the file (src/daemon/splice.rs); the reply
    /// comes back when that cannot be done or the READ is too small to
    /// gain by it, to be answered from a buffer.
    fn splice_read(&self, fh: u64, offset: u64, size: u32, reply: ReplyData) -> Option<ReplyData> {
        if !splice::enabled() || size < splice::MIN_SPLICE {
            return Some(reply);
        }
        let sent = reply.send_raw(|dev, unique| {
            self.fs.read_with(fh, |file| {
                splice::reply_read(dev, unique, file, offset, size as usize)
            })
        });
        match sent {
            Ok(()) => None,
            Err((reply, e)) => {
                debug!("read of handle {fh} not spliced: {e}");
                Some(reply)
            }
        }
    }

    /// Runs `job` (which replies) on a thread of its own when `req` may
    /// take long (a big copy-up, a tree copy: see `UnionFs::may_take_long`),
    /// else on this worker. There is a worker per CPU, which answers
    /// one-at-a-time callers like `ls` fastest, so a long request must not
    /// hold one.
    fn run(&self, req: MayCopy, job: impl FnOnce(&FuseFs) + Send + 'static) {
        let claimed = self.fs.may_take_long(req)
            && self
                .long
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < MAX_LONG).then_some(n + 1)
                })
                .is_ok();
        if !claimed {
            return job(self);
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("unionfs-long".into())
            .spawn(move || {
                job(&me);
                me.long.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            // The job and its reply are dropped: fuser answers EIO.
            self.long.fetch_sub(1, Ordering::SeqCst);
            warn!("cannot start a thread for a long request: {e}");
        }
    }

    /// How the open file `fh` of `ino` is served: the backing file for
    /// passthrough, or `None` through the daemon. `register` makes a
    /// backing file of an fd (the reply's `open_backing`).
    fn serve(
        &self,
        ino: u64,
        fh: u64,
        register: impl FnOnce(std::os::fd::BorrowedFd) -> io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough {
            return None;
        }
        let (fd, eligible) = self.fs.passthrough_candidate(fh).ok()?;
        self.io.open(ino, eligible, || register(fd.as_fd()))
    }
}

/// How an open file served through the daemon is replied: the page cache
/// survives the open (a file changes only through us), and close(2) sends
/// no FLUSH, which we would only answer.
const CACHED_FILE: FopenFlags = FopenFlags::FOPEN_KEEP_CACHE.union(FopenFlags::FOPEN_NOFLUSH);

/// A lookup that found nothing, cached by the kernel as a negative entry:
/// names only appear through requests the kernel sees.
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.raw())
}

/// Logs a failed request (quietly for the everyday ones) and returns its errno.
fn failed(op: &str, e: Error) -> Errno {
    match e.raw() {
        libc::ENOENT | libc::ENODATA | libc::EROFS | libc::EEXIST | libc::ENOTEMPTY => {
            debug!("{op}: {e}")
        }
        _ => warn!("{op}: {e}"),
    }
    errno(&e)
}

fn to_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: to_time(st.st_atime, st.st_atime_nsec),
        mtime: to_time(st.st_mtime, st.st_mtime_nsec),
        ctime: to_time(st.st_ctime, st.st_ctime_nsec),
        crtime: to_time(st.st_ctime, st.st_ctime_nsec),
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Attr, Error>, op: &str) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(a.generation)),
        Err(e) => reply.error(failed(op, e)),
    }
}

fn reply_xattr(reply: ReplyXattr, r: Result<Vec<u8>, Error>, size: u32, op: &str) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(failed(op, e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Error>, op: &str) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(failed(op, e)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        umask: 0,
    }
}

/// Whether the process `pid` (primary group `gid`) is in group `file_gid`
/// or holds CAP_FSETID, as the kernel asks before it lets a mode keep its
/// setgid bit. FUSE sends only the primary group: the others and the
/// capabilities are read from /proc (a caller already gone: its primary
/// group alone decides).
fn in_group_or_fsetid(pid: u32, gid: u32, file_gid: u32) -> bool {
    const CAP_FSETID: u32 = 4; // linux/capability.h
    if gid == file_gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
    };
    let groups = field("Groups:");
    let in_group = groups
        .split_whitespace()
        .any(|g| g.parse::<u32>() == Ok(file_gid));
    let caps = u64::from_str_radix(field("CapEff:").trim(), 16).unwrap_or(0);
    in_group || caps & (1 << CAP_FSETID) != 0
}

/// The caller of a request that creates, with the umask it sent.
fn creator(req: &Request, umask: u32) -> Caller {
    Caller {
        umask,
        ..caller(req)
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let (mut sec, mut nsec) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if nsec < 0 {
                    sec -= 1;
                    nsec += 1_000_000_000;
                }
                SetTime::At(sec, nsec)
            }
        },
    })
}

/// The entry of a create-like reply (mknod, mkdir, symlink open nothing).
fn entry_of(r: Result<(Attr, Option<u64>), Error>) -> Result<Attr, Error> {
    r.map(|(a, _)| a)
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
            // O_TRUNC reaches open(), so a truncating open copies no data up.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // Create modes arrive without the umask, which `ops` applies
            // unless the directory's default ACL takes its place.
            InitFlags::FUSE_DONT_MASK,
        ];
        for flag in wanted {
            if config.add_capabilities(flag).is_err() {
                debug!("kernel lacks {flag:?}");
            }
        }
        // The kernel checks ACLs itself and caches them, so `ls -l` costs
        // no getxattr round trip per file.
        if config.add_capabilities(InitFlags::FUSE_POSIX_ACL).is_err() {
            debug!("kernel lacks FUSE_POSIX_ACL");
        }
        // Requests then come through per-CPU io_uring queues (the vendored
        // fuser's uring.rs), not a read(2) and a writev(2) each. The kernel
        // offers it only where root has set fuse's `enable_uring`.
        let asked = self.transport.io_uring;
        let uring = asked
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok();
        info!(
            target: "unionfs",
            "transport: {}{}",
            match (uring, asked) {
                (true, _) => "FUSE over io_uring",
                (false, true) => "/dev/fuse (the kernel does not offer io_uring: fuse's enable_uring is off)",
                (false, false) => "/dev/fuse",
            },
            if self.transport.splice_write { ", requests received by splice" } else { "" }
        );
        let ok = sys::geteuid() == 0
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough = ok;
        info!(
            target: "unionfs",
            "passthrough: {}",
            match (ok, self.fs.is_read_only()) {
                (true, true) => "on (every file)",
                (true, false) => "on for upper files (lower files go through the daemon)",
                (false, _) => "off (needs root and kernel 6.9+): I/O goes through the daemon",
            }
        );
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(splice::max_write(self.transport.splice_write) as u32);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Err(e) if e.is(libc::ENOENT) => reply.entry(&TTL, &negative_entry(), Generation(0)),
            r => reply_entry(reply, r, "lookup"),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0, _fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(failed("getattr", e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let change = MayCopy::Change { ino: ino.0 };
        self.run(change, move |me| match me.fs.setattr(ino.0, set) {
            Ok(a) => reply.attr(&me.attr_ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(failed("setattr", e)),
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(failed("readlink", e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let what = if mode & libc::S_IFMT == libc::S_IFREG {
            NewObject::File {
                mode,
                flags: libc::O_WRONLY,
            }
        } else {
            NewObject::Special {
                mode,
                rdev: rdev as u64,
            }
        };
        let r = self.fs.create(creator(req, umask), parent.0, name, what);
        // mknod of a regular file opens nothing for the caller.
        if let Ok((_, Some(fh))) = &r {
            self.fs.release(*fh);
        }
        reply_entry(reply, entry_of(r), "mknod");
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let what = NewObject::Dir { mode };
        let r = self.fs.create(creator(req, umask), parent.0, name, what);
        reply_entry(reply, entry_of(r), "mkdir");
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.remove(parent.0, name, false), "unlink");
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.remove(parent.0, name, true), "rmdir");
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let what = NewObject::Symlink {
            target: target.as_os_str().to_os_string(),
        };
        let r = self.fs.create(caller(req), parent.0, link_name, what);
        reply_entry(reply, entry_of(r), "symlink");
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let req = MayCopy::Rename {
            parent: parent.0,
            name,
        };
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        self.run(req, move |me| {
            let r = me
                .fs
                .rename(parent.0, &name, newparent.0, &newname, flags.bits());
            reply_empty(reply, r, "rename");
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = newname.to_os_string();
        self.run(MayCopy::Change { ino: ino.0 }, move |me| {
            reply_entry(reply, me.fs.link(ino.0, newparent.0, &newname), "link");
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let open = MayCopy::Open {
            ino: ino.0,
            flags: flags.0,
        };
        self.run(open, move |me| {
            let fh = match me.fs.open(ino.0, flags.0) {
                Ok(fh) => fh,
                Err(e) => return reply.error(failed("open", e)),
            };
            match me.serve(ino.0, fh, |fd| reply.open_backing(fd)) {
                Some(id) => {
                    // Before the reply: the opener may write through a
                    // mapping and stat at once, before a later notice came.
                    me.passthrough_writable(ino.0, flags.0);
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
                }
                None => reply.opened(FileHandle(fh), CACHED_FILE),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Through an io_uring queue, the bytes go straight into the ring's
        // buffer; through /dev/fuse, big reads are spliced.
        let reply = match reply.fill_raw(size as usize, |dst| self.fs.read_into(fh.0, offset, dst))
        {
            Ok(()) => return splice::count_in_ring(),
            Err((reply, e)) if e.is(libc::EOPNOTSUPP) => reply,
            Err((reply, e)) => return reply.error(failed("read", e)),
        };
        let reply = match self.splice_read(fh.0, offset, size, reply) {
            None => return,
            Some(r) => r,
        };
        splice::count_buffered();
        BUF.with_borrow_mut(|buf| match self.fs.read(fh.0, offset, size, buf) {
            Ok(data) => reply.data(data),
            Err(e) => reply.error(failed("read", e)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(failed("write", e)),
        }
    }

    fn write_from_pipe(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &mut PipeData<'_>,
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut buf = Vec::new();
        let written = self.fs.write_with(fh.0, |fd| {
            splice::write_from_pipe(fd, offset, data, &mut buf)
        });
        match written {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(failed("write", e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync), "fsync");
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsyncdir(ino.0, datasync), "fsyncdir");
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.fs.fallocate(fh.0, mode, offset, length),
            "fallocate",
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(failed("lseek", e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        if self.passthrough {
            self.io.release(_ino.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok((fh, true)) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(failed("opendir", e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir(fh.0, offset, true, |next, e| {
            reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("readdir", e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = self.fs.readdir(fh.0, offset, false, |next, e| {
            // An entry that vanished since the snapshot is skipped, as a
            // plain readdir would show it but a lookup would not find it.
            let attr = match self.fs.entry_attr(ino.0, e) {
                Ok(a) => a,
                Err(err) => {
                    debug!("readdirplus {:?}: {err}", e.name);
                    return false;
                }
            };
            let full = reply.add(
                INodeNo(attr.ino),
                next,
                &e.name,
                &TTL,
                &file_attr(&attr),
                Generation(attr.generation),
            );
            // Did not fit: the kernel never sees it, so it holds no lookup.
            if full && e.name != "." && e.name != ".." {
                self.fs.forget(attr.ino, 1);
            }
            full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("readdirplus", e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(failed("statfs", e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_os_string(), value.to_vec());
        let (pid, gid) = (req.pid(), req.gid());
        self.run(MayCopy::Change { ino: ino.0 }, move |me| {
            let in_group = |file_gid| in_group_or_fsetid(pid, gid, file_gid);
            let r = me.fs.setxattr(ino.0, &name, &value, flags, &in_group);
            reply_empty(reply, r, "setxattr");
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.getxattr(ino.0, name), size, "getxattr");
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.listxattr(ino.0), size, "listxattr");
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.run(MayCopy::Change { ino: ino.0 }, move |me| {
            reply_empty(reply, me.fs.removexattr(ino.0, &name), "removexattr");
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(failed("access", e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        let what = NewObject::File { mode, flags };
        match self.fs.create(creator(req, umask), parent.0, name, what) {
            Ok((a, Some(fh))) => {
                let attr = file_attr(&a);
                let gen = Generation(a.generation);
                match self.serve(a.ino, fh, |fd| reply.open_backing(fd)) {
                    Some(id) => {
                        reply.created_passthrough(
                            &TTL,
                            &attr,
                            gen,
                            FileHandle(fh),
                            FopenFlags::FOPEN_NOFLUSH,
                            &id,
                        );
                        self.passthrough_writable(a.ino, flags);
                    }
                    None => reply.created(&TTL, &attr, gen, FileHandle(fh), CACHED_FILE),
                }
            }
            Ok((_, None)) => reply.error(Errno::EIO),
            Err(e) => reply.error(failed("create", e)),
        }
    }
}
