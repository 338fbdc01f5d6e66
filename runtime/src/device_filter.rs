//! Which device nodes a container may open or create: a cgroup v2 device program, as runc and
//! Docker attach one.
//!
//! cgroup v2 has no `devices.allow` file; the kernel asks a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the cgroup instead, on every `open(2)` of a device node and every
//! `mknod(2)` of one, by any process in the cgroup. The program gets
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`, where
//! `access_type` is `(access << 16) | type` (type 1 block, 2 char; access bits 1 mknod,
//! 2 read, 4 write), and returns 1 to allow or 0 to deny (the caller gets `EPERM`).
//!
//! The program is generated from a list of [`DeviceRule`]s: it loads the context into
//! registers, then tests each rule in turn (type unless any, access a subset of the rule's,
//! major and minor unless any) and returns 1 at the first that matches; after the last it
//! returns 0. The default rules are runc's and Docker's: `mknod` of any node (creating one is
//! harmless, opening it is what counts), and read, write and mknod of the OCI default devices
//! (`null`, `zero`, `full`, `random`, `urandom`, `tty`, `console`, `ptmx`, the pts), plus the
//! host devices the manifest passes in.
//!
//! The eBPF instructions are encoded by hand: no pure-Rust crate builds cgroup device
//! programs (runc generates the same instructions with cilium/ebpf's `asm` package, youki
//! with rbpf's assembler, which drags in a JIT PID 1 does not need), and the program uses
//! seven instruction kinds. It is loaded and attached with the raw `bpf(2)` syscall, which
//! nix does not wrap.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{makedev, mkdirat, mknodat, Mode, SFlag};

use crate::RuntimeError;

/// `bpf(2)` commands.
const BPF_PROG_LOAD: nix::libc::c_long = 5;
const BPF_PROG_ATTACH: nix::libc::c_long = 8;
/// `enum bpf_prog_type`: `BPF_PROG_TYPE_CGROUP_DEVICE`.
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `enum bpf_attach_type`: `BPF_CGROUP_DEVICE`.
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_PROG_DETACH: nix::libc::c_long = 9;
/// Attach flags: none, the exclusive mode. A new attach replaces the cgroup's program (a
/// restarted container reuses its cgroup, and its devices may have changed), and no
/// descendant cgroup can attach one that would override it.
const BPF_F_EXCLUSIVE: u32 = 0;
/// The verifier's log when a load fails: level 1 (errors and the path that led to them).
const VERIFIER_LOG_LEVEL: u32 = 1;
const VERIFIER_LOG_SIZE: usize = 64 * 1024;
/// The program's license (no GPL-only helper is called).
const LICENSE: &[u8] = b"Apache-2.0\0";

/// `bpf_cgroup_dev_ctx` fields' offsets.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

/// `bpf_cgroup_dev_ctx` device types.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Device majors of the default devices.
const MEM_MAJOR: u32 = 1;
const TTYAUX_MAJOR: u32 = 5;
const UNIX98_PTY_SLAVE_MAJOR: u32 = 136;

/// Access bits, as `bpf_cgroup_dev_ctx` (and `devices.allow`'s `m`, `r`, `w`) has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    pub const MKNOD: Access = Access(1);
    pub const READ: Access = Access(2);
    pub const WRITE: Access = Access(4);
    pub const ALL: Access = Access(7);

    /// From `rwm` letters (any subset, any order); `None` for another letter.
    pub fn parse(letters: &str) -> Option<Access> {
        letters.chars().try_fold(Access(0), |acc, c| match c {
            'r' => Some(Access(acc.0 | Access::READ.0)),
            'w' => Some(Access(acc.0 | Access::WRITE.0)),
            'm' => Some(Access(acc.0 | Access::MKNOD.0)),
            _ => None,
        })
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

/// A device node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Block,
    Char,
}

/// A host device passed into a container: created at `path` in its `/dev`, and allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Absolute path inside the container, under `/dev/`.
    pub path: String,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the node (the host node's).
    pub mode: u32,
    pub access: Access,
}

/// One allow rule; `None` matches any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: Option<DeviceKind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: Access,
}

const fn char_rwm(major: u32, minor: Option<u32>) -> DeviceRule {
    DeviceRule {
        kind: Some(DeviceKind::Char),
        major: Some(major),
        minor,
        access: Access::ALL,
    }
}

/// runc's and Docker's default rules.
pub const DEFAULT_RULES: &[DeviceRule] = &[
    // mknod of anything; opening what was made is another matter.
    DeviceRule {
        kind: Some(DeviceKind::Char),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    DeviceRule {
        kind: Some(DeviceKind::Block),
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    char_rwm(MEM_MAJOR, Some(3)),           // null
    char_rwm(MEM_MAJOR, Some(5)),           // zero
    char_rwm(MEM_MAJOR, Some(7)),           // full
    char_rwm(MEM_MAJOR, Some(8)),           // random
    char_rwm(MEM_MAJOR, Some(9)),           // urandom
    char_rwm(TTYAUX_MAJOR, Some(0)),        // tty
    char_rwm(TTYAUX_MAJOR, Some(1)),        // console
    char_rwm(TTYAUX_MAJOR, Some(2)),        // ptmx
    char_rwm(UNIX98_PTY_SLAVE_MAJOR, None), // pts/*
];

/// The default rules plus one per passed device.
pub fn rules(devices: &[DeviceNode]) -> Vec<DeviceRule> {
    DEFAULT_RULES
        .iter()
        .copied()
        .chain(devices.iter().map(|d| DeviceRule {
            kind: Some(d.kind),
            major: Some(d.major),
            minor: Some(d.minor),
            access: d.access,
        }))
        .collect()
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst register in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Opcodes (class | operation | source) of the instructions the program uses.
pub(crate) mod op {
    /// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
    pub const LDX_W: u8 = 0x61;
    /// `BPF_ALU | BPF_AND | BPF_K`: dst &= imm (32 bits).
    pub const AND32_K: u8 = 0x54;
    /// `BPF_ALU | BPF_RSH | BPF_K`: dst >>= imm (32 bits).
    pub const RSH32_K: u8 = 0x74;
    /// `BPF_ALU | BPF_MOV | BPF_K`: dst = imm (32 bits).
    pub const MOV32_K: u8 = 0xb4;
    /// `BPF_ALU | BPF_MOV | BPF_X`: dst = src (32 bits).
    pub const MOV32_X: u8 = 0xbc;
    /// `BPF_JMP | BPF_JNE | BPF_K`: if dst != imm, skip off instructions.
    pub const JNE_K: u8 = 0x55;
    /// `BPF_JMP | BPF_JNE | BPF_X`: if dst != src, skip off instructions.
    pub const JNE_X: u8 = 0x5d;
    /// `BPF_JMP | BPF_EXIT`: return r0.
    pub const EXIT: u8 = 0x95;
}

/// Registers: r0 the result, r1 the context (then scratch), r2..r5 what it holds.
const R0: u8 = 0;
const R1: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0x0f) | (src << 4),
        off,
        imm,
    }
}

/// A rule's major or minor as the 32-bit immediate it is compared with; the kernel's are
/// 12 and 20 bits wide.
fn immediate(value: u32, what: &str) -> Result<i32, String> {
    i32::try_from(value).map_err(|_| format!("device {what} {value} is out of range"))
}

/// The program for `rules`: allow at the first rule that matches, deny after the last.
pub(crate) fn program(rules: &[DeviceRule]) -> Result<Vec<Insn>, String> {
    let mut prog = vec![
        insn(op::LDX_W, TYPE, R1, CTX_ACCESS_TYPE, 0),
        insn(op::AND32_K, TYPE, 0, 0, 0xffff),
        insn(op::LDX_W, ACCESS, R1, CTX_ACCESS_TYPE, 0),
        insn(op::RSH32_K, ACCESS, 0, 0, 16),
        insn(op::LDX_W, MAJOR, R1, CTX_MAJOR, 0),
        insn(op::LDX_W, MINOR, R1, CTX_MINOR, 0),
    ];
    for rule in rules {
        // Each test jumps past the rule's end on a mismatch; offsets are filled in below.
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            let kind = match kind {
                DeviceKind::Block => DEV_BLOCK,
                DeviceKind::Char => DEV_CHAR,
            };
            block.push(insn(op::JNE_K, TYPE, 0, 0, kind));
        }
        if rule.access != Access::ALL {
            // requested & rule == requested: nothing asked for that the rule does not give.
            block.push(insn(op::MOV32_X, R1, ACCESS, 0, 0));
            block.push(insn(op::AND32_K, R1, 0, 0, i32::from(rule.access.bits())));
            block.push(insn(op::JNE_X, R1, ACCESS, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(insn(op::JNE_K, MAJOR, 0, 0, immediate(major, "major")?));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(op::JNE_K, MINOR, 0, 0, immediate(minor, "minor")?));
        }
        block.push(insn(op::MOV32_K, R0, 0, 0, 1));
        block.push(insn(op::EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == op::JNE_K || ins.code == op::JNE_X {
                ins.off = i16::try_from(len - i - 1)
                    .map_err(|_| "a device rule is too long".to_string())?;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(op::MOV32_K, R0, 0, 0, 0));
    prog.push(insn(op::EXIT, 0, 0, 0, 0));
    Ok(prog)
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`; the kernel takes the
/// fields after it as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Calls `bpf(cmd, attr, sizeof *attr)`.
///
/// # Safety
/// `T` must be the `bpf_attr` layout of `cmd`, and every pointer in it valid for the call
/// (readable, or writable with the length given beside it).
unsafe fn bpf<T>(cmd: nix::libc::c_long, attr: &mut T) -> Result<nix::libc::c_long, Errno> {
    // SAFETY: the caller vouches for the layout and the pointers; the size is `T`'s own.
    let ret = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    Errno::result(ret)
}

/// Loads `prog`; on failure loads it again with the verifier's log, and returns that.
fn load(prog: &[Insn]) -> Result<OwnedFd, (Errno, String)> {
    let insn_cnt = u32::try_from(prog.len()).map_err(|_| (Errno::E2BIG, String::new()))?;
    let mut name = [0u8; 16];
    for (slot, byte) in name.iter_mut().zip(b"berth_devices") {
        *slot = *byte;
    }
    let attr = |log: &mut [u8]| ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: prog.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        log_level: if log.is_empty() {
            0
        } else {
            VERIFIER_LOG_LEVEL
        },
        log_size: u32::try_from(log.len()).unwrap_or(0),
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    let mut first = attr(&mut []);
    // SAFETY: `ProgLoadAttr` is `bpf_attr`'s BPF_PROG_LOAD prefix; `insns` points at
    // `insn_cnt` `struct bpf_insn`s and `license` at a NUL-terminated string, both alive for
    // the call; there is no log buffer.
    let error = match unsafe { bpf(BPF_PROG_LOAD, &mut first) } {
        Ok(fd) => return Ok(prog_fd(fd)),
        Err(errno) => errno,
    };
    let mut log = vec![0u8; VERIFIER_LOG_SIZE];
    let mut second = attr(&mut log);
    // SAFETY: as above, and `log_buf` points at `log_size` writable bytes that outlive the
    // call.
    let log_text = match unsafe { bpf(BPF_PROG_LOAD, &mut second) } {
        // Loaded the second time: keep it, the first failure was transient.
        Ok(fd) => return Ok(prog_fd(fd)),
        Err(_) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            String::from_utf8_lossy(log.get(..end).unwrap_or_default())
                .trim_end()
                .to_string()
        }
    };
    Err((error, log_text))
}

fn prog_fd(fd: nix::libc::c_long) -> OwnedFd {
    // The kernel returns a new descriptor; it fits a c_int.
    let raw = i32::try_from(fd).unwrap_or(-1);
    // SAFETY: `raw` is the descriptor BPF_PROG_LOAD just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Attaches the device program for `devices` (beside the defaults) to `cgroup`, before any
/// process is in it.
pub(crate) fn attach(cgroup: &Path, devices: &[DeviceNode]) -> Result<(), RuntimeError> {
    let error = |step: &'static str, source: Errno, log: String| RuntimeError::DeviceFilter {
        cgroup: cgroup.to_path_buf(),
        step,
        source,
        log,
    };
    let prog = program(&rules(devices)).map_err(|log| error("generate", Errno::EINVAL, log))?;
    let prog_fd = load(&prog).map_err(|(errno, log)| error("load", errno, log))?;
    let dir = nix::fcntl::open(
        cgroup,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| error("open", errno, String::new()))?;
    let mut attr = ProgAttachAttr {
        target_fd: fd_u32(dir.as_fd()),
        attach_bpf_fd: fd_u32(prog_fd.as_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_EXCLUSIVE,
        ..ProgAttachAttr::default()
    };
    // SAFETY: `ProgAttachAttr` is `bpf_attr`'s BPF_PROG_ATTACH layout; it holds no pointers,
    // and both descriptors are open for the call.
    unsafe { bpf(BPF_PROG_ATTACH, &mut attr) }
        .map_err(|errno| error("attach", errno, String::new()))?;
    // The cgroup holds the program now; our descriptors can go.
    Ok(())
}

/// Removes the device program from `cgroup`, if it has one: a privileged container gets every
/// device, also when it reuses the cgroup of an unprivileged run.
pub(crate) fn detach(cgroup: &Path) -> Result<(), RuntimeError> {
    let error = |step: &'static str, source: Errno| RuntimeError::DeviceFilter {
        cgroup: cgroup.to_path_buf(),
        step,
        source,
        log: String::new(),
    };
    let dir = nix::fcntl::open(
        cgroup,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| error("open", errno))?;
    let mut attr = ProgAttachAttr {
        target_fd: fd_u32(dir.as_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgAttachAttr::default()
    };
    // SAFETY: `ProgAttachAttr` is also `bpf_attr`'s BPF_PROG_DETACH layout; it holds no
    // pointers, and the cgroup's descriptor is open for the call.
    match unsafe { bpf(BPF_PROG_DETACH, &mut attr) } {
        // ENOENT: nothing attached; ENOSYS (no bpf(2)) or EINVAL (no cgroup programs in this
        // kernel): nothing can be.
        Ok(_) | Err(Errno::ENOENT | Errno::EINVAL | Errno::ENOSYS) => Ok(()),
        Err(errno) => Err(error("detach", errno)),
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    // An open descriptor is never negative.
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Creates each of `devices` in the container's `/dev`, given as `dev_dir` (an fd of the fresh
/// tmpfs): intermediate directories are made with `mkdirat` and entered with `O_NOFOLLOW`, so
/// nothing resolves outside it. Nodes get their host node's mode.
pub(crate) fn create_device_nodes(
    dev_dir: BorrowedFd<'_>,
    devices: &[DeviceNode],
) -> Result<(), String> {
    // mknodat applies the umask; the nodes must have the host's modes.
    let previous = nix::sys::stat::umask(Mode::empty());
    let result = devices
        .iter()
        .try_for_each(|device| create_device_node(dev_dir, device));
    nix::sys::stat::umask(previous);
    result
}

fn create_device_node(dev_dir: BorrowedFd<'_>, device: &DeviceNode) -> Result<(), String> {
    let path = &device.path;
    let relative = path
        .strip_prefix("/dev/")
        .ok_or_else(|| format!("device {path}: not under /dev/"))?;
    let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!("device {path}: `.` and `..` are not allowed"));
    }
    let (name, dirs) = parts
        .split_last()
        .ok_or_else(|| format!("device {path}: no name under /dev/"))?;
    let mut owned: Option<OwnedFd> = None;
    for dir in dirs {
        let parent = owned.as_ref().map_or(dev_dir, AsFd::as_fd);
        match mkdirat(parent, *dir, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("device {path}: create directory {dir}: {e}")),
        }
        let next = openat(
            parent,
            *dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("device {path}: open directory {dir}: {e}"))?;
        owned = Some(next);
    }
    let parent = owned.as_ref().map_or(dev_dir, AsFd::as_fd);
    let kind = match device.kind {
        DeviceKind::Block => SFlag::S_IFBLK,
        DeviceKind::Char => SFlag::S_IFCHR,
    };
    mknodat(
        parent,
        *name,
        kind,
        Mode::from_bits_truncate(device.mode & 0o7777),
        makedev(u64::from(device.major), u64::from(device.minor)),
    )
    .map_err(|e| format!("device {path}: mknod: {e}"))
}

#[cfg(test)]
#[expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests"
)]
mod tests {
    use super::*;

    /// Runs `prog` over a `bpf_cgroup_dev_ctx`, for the instructions [`program`] emits.
    fn run(prog: &[Insn], kind: i32, access: u32, major: u32, minor: u32) -> u64 {
        #[expect(clippy::cast_sign_loss, reason = "the type is 1 or 2")]
        let ctx = [(access << 16) | kind as u32, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let dst = usize::from(i.regs & 0x0f);
            let src = usize::from(i.regs >> 4);
            #[expect(clippy::cast_sign_loss, reason = "as the machine does")]
            let imm = i64::from(i.imm) as u64;
            pc += 1;
            match i.code {
                op::LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    regs[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                op::AND32_K => regs[dst] = (regs[dst] & imm) & 0xffff_ffff,
                op::RSH32_K => regs[dst] = (regs[dst] & 0xffff_ffff) >> imm,
                op::MOV32_K => regs[dst] = imm & 0xffff_ffff,
                op::MOV32_X => regs[dst] = regs[src] & 0xffff_ffff,
                op::JNE_K | op::JNE_X => {
                    let other = if i.code == op::JNE_K { imm } else { regs[src] };
                    if regs[dst] != other {
                        pc += usize::try_from(i.off).unwrap();
                    }
                }
                op::EXIT => return regs[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    const B: i32 = DEV_BLOCK;
    const C: i32 = DEV_CHAR;
    const M: u32 = 1;
    const R: u32 = 2;
    const W: u32 = 4;

    fn passed() -> Vec<DeviceNode> {
        vec![
            DeviceNode {
                path: "/dev/vdb".into(),
                kind: DeviceKind::Block,
                major: 254,
                minor: 16,
                mode: 0o660,
                access: Access::READ,
            },
            DeviceNode {
                path: "/dev/fuse".into(),
                kind: DeviceKind::Char,
                major: 10,
                minor: 229,
                mode: 0o666,
                access: Access::ALL,
            },
        ]
    }

    #[test]
    fn rules_allow_and_deny_as_runc_does() {
        let prog = program(&rules(&passed())).unwrap();
        let table: &[(i32, u32, u32, u32, bool)] = &[
            // mknod of anything.
            (B, M, 8, 0, true),
            (C, M, 4, 64, true),
            (B, M, 254, 0, true),
            // but not opening it.
            (B, R, 8, 0, false),
            (B, W, 254, 0, false),
            (C, W, 4, 64, false),
            (C, R | W, 204, 64, false),
            (C, R, 1, 1, false), // /dev/mem
            (C, R | W | M, 10, 200, false),
            // the default devices.
            (C, R | W, 1, 3, true),
            (C, R, 1, 5, true),
            (C, W, 1, 7, true),
            (C, R, 1, 8, true),
            (C, R | W | M, 1, 9, true),
            (C, R | W, 5, 0, true),
            (C, R | W, 5, 1, true),
            (C, R | W, 5, 2, true),
            (C, R | W, 136, 0, true),
            (C, R | W, 136, 77, true),
            (C, R | W, 5, 3, false),
            // a char rule says nothing of the block device with the same numbers.
            (B, R, 1, 3, false),
            (B, R, 136, 0, false),
            // passed devices, with their permissions only.
            (B, R, 254, 16, true),
            (B, W, 254, 16, false),
            (B, R | W, 254, 16, false),
            (B, M, 254, 16, true),
            (B, R, 254, 17, false),
            (B, R, 254, 0, false),
            (C, R, 254, 16, false),
            (C, R | W, 10, 229, true),
            (C, R | W, 10, 228, false),
        ];
        for &(kind, access, major, minor, allowed) in table {
            assert_eq!(
                run(&prog, kind, access, major, minor),
                u64::from(allowed),
                "type {kind} access {access} {major}:{minor}"
            );
        }
    }

    #[test]
    fn without_rules_everything_is_denied_and_any_matches_everything() {
        let deny = program(&[]).unwrap();
        assert_eq!(run(&deny, C, R, 1, 3), 0);
        let all = program(&[DeviceRule {
            kind: None,
            major: None,
            minor: None,
            access: Access::ALL,
        }])
        .unwrap();
        assert_eq!(run(&all, B, R | W | M, 8, 0), 1);
        let read_any_block = program(&[DeviceRule {
            kind: Some(DeviceKind::Block),
            major: None,
            minor: Some(0),
            access: Access::READ,
        }])
        .unwrap();
        assert_eq!(run(&read_any_block, B, R, 8, 0), 1);
        assert_eq!(run(&read_any_block, B, R, 8, 1), 0);
        assert_eq!(run(&read_any_block, B, R | W, 8, 0), 0);
        assert_eq!(run(&read_any_block, C, R, 8, 0), 0);
    }

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        let prog = program(&[]).unwrap();
        // r2 = *(u32 *)(r1 + 0): dst 2 in the low nibble, src 1 in the high one.
        assert_eq!(prog[0], insn(op::LDX_W, 2, 1, 0, 0));
        assert_eq!(prog[0].regs, 0x12);
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<ProgAttachAttr>(), 20);
        let last = prog.last().unwrap();
        assert_eq!(last.code, op::EXIT);
        // An out-of-range number is refused, not truncated.
        let bad = DeviceRule {
            kind: Some(DeviceKind::Char),
            major: Some(u32::MAX),
            minor: None,
            access: Access::ALL,
        };
        assert!(program(&[bad]).is_err());
    }

    /// Where the test runs with CAP_BPF (as root on a build host), the running kernel's
    /// verifier checks the program; elsewhere there is nothing to check.
    #[test]
    fn the_kernels_verifier_accepts_the_program() {
        let prog = program(&rules(&passed())).unwrap();
        match load(&prog) {
            Ok(_) => {
                // And a broken program comes back with the verifier's reason.
                let (errno, log) = load(&prog[..3]).unwrap_err();
                assert_eq!(errno, Errno::EINVAL);
                assert!(!log.is_empty());
            }
            Err((Errno::EPERM | Errno::ENOSYS, _)) => {
                eprintln!("no bpf(2) here: the verifier is not asked");
            }
            Err((errno, log)) => panic!("{errno}: {log}"),
        }
    }

    #[test]
    fn permissions_parse_from_rwm_letters() {
        assert_eq!(Access::parse("rwm"), Some(Access::ALL));
        assert_eq!(Access::parse("r"), Some(Access::READ));
        assert_eq!(Access::parse("mw").map(Access::bits), Some(5));
        assert_eq!(Access::parse("rx"), None);
    }

    #[test]
    fn device_paths_must_stay_under_dev() {
        let dir = std::fs::File::open("/").unwrap();
        for bad in ["/etc/x", "/dev/../x", "/dev/a/./b", "/dev/"] {
            let device = DeviceNode {
                path: bad.into(),
                ..passed()[0].clone()
            };
            let err = create_device_node(dir.as_fd(), &device).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
