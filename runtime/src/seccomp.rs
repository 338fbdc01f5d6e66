//! A seccomp filter equal in effect to Docker's default profile, built in Rust with
//! `seccompiler`.
//!
//! Docker's profile is an allowlist of ~350 syscalls; what it leaves out are the ones that
//! reach past a container (kernel modules, keyrings, clocks, mounts, namespaces, reboot, ...),
//! and it lets some back in when the container holds the capability that guards them. berth
//! writes the same policy the other way round: every syscall Docker refuses is listed here with
//! the capability that unlocks it (or none), and everything else is allowed. New syscalls the
//! kernel grows are allowed too, which is the one difference; the ones that matter for escape
//! (the new mount API, clone3's namespaces) are listed. `clone3` answers ENOSYS, as Docker's
//! does, so that libc falls back to `clone`, whose namespace flags can be inspected.

use std::collections::BTreeMap;

use nix::libc;
#[cfg(target_arch = "x86_64")]
use seccompiler::sock_filter;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Capability numbers (`linux/capability.h`) that unlock syscalls in Docker's profile.
mod cap {
    pub const DAC_READ_SEARCH: u8 = 2;
    pub const SYS_MODULE: u8 = 16;
    #[cfg(target_arch = "x86_64")]
    pub const SYS_RAWIO: u8 = 17;
    pub const SYS_PTRACE: u8 = 19;
    pub const SYS_PACCT: u8 = 20;
    pub const SYS_ADMIN: u8 = 21;
    pub const SYS_BOOT: u8 = 22;
    pub const SYS_NICE: u8 = 23;
    pub const SYS_TIME: u8 = 25;
    pub const SYS_TTY_CONFIG: u8 = 26;
    pub const SYSLOG: u8 = 34;
}

/// Every syscall Docker's default profile refuses, with the capability that lets it through.
const REFUSED: &[(libc::c_long, Option<u8>)] = &[
    (libc::SYS_acct, Some(cap::SYS_PACCT)),
    (libc::SYS_add_key, None),
    (libc::SYS_keyctl, None),
    (libc::SYS_request_key, None),
    (libc::SYS_bpf, Some(cap::SYS_ADMIN)),
    (libc::SYS_perf_event_open, Some(cap::SYS_ADMIN)),
    (libc::SYS_clock_adjtime, Some(cap::SYS_TIME)),
    (libc::SYS_clock_settime, Some(cap::SYS_TIME)),
    (libc::SYS_settimeofday, Some(cap::SYS_TIME)),
    (libc::SYS_init_module, Some(cap::SYS_MODULE)),
    (libc::SYS_finit_module, Some(cap::SYS_MODULE)),
    (libc::SYS_delete_module, Some(cap::SYS_MODULE)),
    (libc::SYS_get_mempolicy, Some(cap::SYS_NICE)),
    (libc::SYS_set_mempolicy, Some(cap::SYS_NICE)),
    (libc::SYS_mbind, Some(cap::SYS_NICE)),
    (libc::SYS_move_pages, Some(cap::SYS_NICE)),
    (libc::SYS_kcmp, Some(cap::SYS_PTRACE)),
    (libc::SYS_process_vm_readv, Some(cap::SYS_PTRACE)),
    (libc::SYS_process_vm_writev, Some(cap::SYS_PTRACE)),
    (libc::SYS_userfaultfd, Some(cap::SYS_PTRACE)),
    (libc::SYS_kexec_load, Some(cap::SYS_BOOT)),
    (SYS_KEXEC_FILE_LOAD, Some(cap::SYS_BOOT)),
    (libc::SYS_reboot, Some(cap::SYS_BOOT)),
    (libc::SYS_lookup_dcookie, Some(cap::SYS_ADMIN)),
    (libc::SYS_mount, Some(cap::SYS_ADMIN)),
    (libc::SYS_umount2, Some(cap::SYS_ADMIN)),
    (libc::SYS_pivot_root, Some(cap::SYS_ADMIN)),
    (libc::SYS_setns, Some(cap::SYS_ADMIN)),
    (libc::SYS_unshare, Some(cap::SYS_ADMIN)),
    (libc::SYS_swapon, Some(cap::SYS_ADMIN)),
    (libc::SYS_swapoff, Some(cap::SYS_ADMIN)),
    (libc::SYS_quotactl, Some(cap::SYS_ADMIN)),
    (libc::SYS_fanotify_init, Some(cap::SYS_ADMIN)),
    (libc::SYS_fsopen, Some(cap::SYS_ADMIN)),
    (libc::SYS_fsconfig, Some(cap::SYS_ADMIN)),
    (libc::SYS_fsmount, Some(cap::SYS_ADMIN)),
    (libc::SYS_fspick, Some(cap::SYS_ADMIN)),
    (libc::SYS_move_mount, Some(cap::SYS_ADMIN)),
    (libc::SYS_open_tree, Some(cap::SYS_ADMIN)),
    (libc::SYS_mount_setattr, Some(cap::SYS_ADMIN)),
    (libc::SYS_name_to_handle_at, Some(cap::SYS_ADMIN)),
    (libc::SYS_open_by_handle_at, Some(cap::DAC_READ_SEARCH)),
    (libc::SYS_syslog, Some(cap::SYSLOG)),
    (libc::SYS_vhangup, Some(cap::SYS_TTY_CONFIG)),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, Some(cap::SYS_RAWIO)),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, Some(cap::SYS_RAWIO)),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_nfsservctl, None),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_uselib, None),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ustat, None),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_sysfs, None),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS__sysctl, None),
    // Docker took io_uring out of its default profile in 2023 (moby#46762): its rings do the
    // work of syscalls without passing through this filter, and it has been the source of a
    // long run of kernel privilege escalations. No capability lets it back in.
    (libc::SYS_io_uring_setup, None),
    (libc::SYS_io_uring_enter, None),
    (libc::SYS_io_uring_register, None),
];

/// musl's aarch64 headers leave out kexec_file_load; 294 is its number in asm-generic.
#[cfg(target_arch = "aarch64")]
const SYS_KEXEC_FILE_LOAD: libc::c_long = 294;
#[cfg(not(target_arch = "aarch64"))]
const SYS_KEXEC_FILE_LOAD: libc::c_long = libc::SYS_kexec_file_load;

/// clone(2) flags that make namespaces: refused without CAP_SYS_ADMIN.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const TARGET: TargetArch = TargetArch::aarch64;

fn filter_error(err: seccompiler::BackendError) -> String {
    format!("build the seccomp filter: {err}")
}

/// `seccomp_data`'s offsets (`linux/seccomp.h`): the syscall number, then the audit arch.
#[cfg(target_arch = "x86_64")]
const SECCOMP_DATA_NR: u32 = 0;
#[cfg(target_arch = "x86_64")]
const SECCOMP_DATA_ARCH: u32 = 4;
/// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `__X32_SYSCALL_BIT`: x32 syscalls arrive on x86_64's entry with the native arch and this
/// bit set in their number, so a rule on a native number never matches them.
#[cfg(target_arch = "x86_64")]
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Classic BPF opcodes (`linux/bpf_common.h`).
#[cfg(target_arch = "x86_64")]
mod bpf {
    /// BPF_LD | BPF_W | BPF_ABS (the first two are 0).
    pub const LD_W_ABS: u16 = 0x20;
    pub const JMP_JEQ_K: u16 = 0x05 | 0x10;
    pub const JMP_JGE_K: u16 = 0x05 | 0x30;
    pub const RET_K: u16 = 0x06;
}

/// Instructions put before the EPERM list on x86_64 so that the x32 ABI is refused whole:
/// the list is a deny-list on native numbers, which an x32 number (the same call with
/// [`X32_SYSCALL_BIT`] set) would pass untouched: x32 `mount`, `keyctl`, `unshare`, ...
///
/// ```text
/// 0: A = seccomp_data.arch
/// 1: if A != AUDIT_ARCH_X86_64 goto 5   (seccompiler's program checks the arch itself)
/// 2: A = seccomp_data.nr
/// 3: if A < X32_SYSCALL_BIT goto 5
/// 4: return ERRNO(EPERM)
/// 5: seccompiler's program
/// ```
/// Classic BPF jumps are relative to the next instruction and only go forward, so
/// seccompiler's program, whose jumps stay inside itself, works unchanged behind the prefix;
/// both exits of the prefix land on its first instruction, which reloads what it needs.
///
/// EPERM, not ENOSYS: it is what every other refusal of this filter answers, and it differs
/// from the kernel's own ENOSYS on kernels that build x32 but leave it off (Debian's), so a
/// test can tell that the filter answered first.
#[cfg(target_arch = "x86_64")]
fn x32_prefix(errno: u32) -> BpfProgram {
    let stmt = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        stmt(bpf::LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(bpf::JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        stmt(bpf::LD_W_ABS, SECCOMP_DATA_NR),
        jump(bpf::JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(
            bpf::RET_K,
            libc::SECCOMP_RET_ERRNO | (errno & libc::SECCOMP_RET_DATA),
        ),
    ]
}

/// `program` behind the x32 prefix on x86_64; as it is elsewhere.
fn refuse_other_abis(program: BpfProgram, errno: u32) -> BpfProgram {
    #[cfg(target_arch = "x86_64")]
    {
        let mut prefixed = x32_prefix(errno);
        prefixed.extend(program);
        prefixed
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = errno;
        program
    }
}

/// The two BPF programs of the default profile for a process holding `capabilities`: the
/// EPERM list (behind the x32 refusal on x86_64), and clone3's ENOSYS. Every filter
/// installed runs on every syscall and the strictest answer wins, so refusing x32 in the
/// first program covers the second.
pub fn default_profile(capabilities: &[u8]) -> Result<Vec<BpfProgram>, String> {
    let held = |cap: Option<u8>| cap.is_some_and(|c| capabilities.contains(&c));
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = REFUSED
        .iter()
        .filter(|(_, unlocked_by)| !held(*unlocked_by))
        .map(|(nr, _)| (*nr, Vec::new()))
        .collect();
    if !held(Some(cap::SYS_ADMIN)) {
        let rules = NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                let flag = u64::from(flag.unsigned_abs());
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(flag),
                    flag,
                )
                .and_then(|condition| SeccompRule::new(vec![condition]))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(filter_error)?;
        refused.insert(libc::SYS_clone, rules);
    }
    let eperm = u32::try_from(libc::EPERM).unwrap_or(1);
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let mut programs = Vec::with_capacity(2);
    for (rules, errno) in [
        (refused, eperm),
        (BTreeMap::from([(libc::SYS_clone3, Vec::new())]), enosys),
    ] {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno),
            TARGET,
        )
        .map_err(filter_error)?;
        programs.push(BpfProgram::try_from(filter).map_err(filter_error)?);
    }
    if let Some(first) = programs.first_mut() {
        *first = refuse_other_abis(std::mem::take(first), eperm);
    }
    Ok(programs)
}

/// Installs the programs; after this only exec remains. Needs no_new_privs or CAP_SYS_ADMIN.
pub fn install(programs: &[BpfProgram]) -> Result<(), String> {
    for program in programs {
        seccompiler::apply_filter(program)
            .map_err(|e| format!("install the seccomp filter: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
#[cfg_attr(
    target_arch = "x86_64",
    expect(clippy::indexing_slicing, clippy::panic, reason = "tests")
)]
mod tests {
    use super::*;

    #[test]
    fn io_uring_is_refused_whatever_the_capabilities() {
        for nr in [
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ] {
            assert!(REFUSED.contains(&(nr, None)), "syscall {nr}");
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_numbers_are_refused_before_the_deny_list() {
        let eperm = u32::try_from(libc::EPERM).unwrap_or(1);
        let programs = default_profile(&[]).unwrap_or_default();
        let plain = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_keyctl, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(eperm),
            TARGET,
        )
        .and_then(BpfProgram::try_from)
        .unwrap_or_default();
        let prefix = x32_prefix(eperm);
        assert_eq!(prefix.len(), 5);
        // The prefix, then seccompiler's program whole: its arch check comes first.
        assert_eq!(programs[0][..5], prefix[..]);
        assert_eq!(programs[0][5..8], plain[..3], "seccompiler's arch check");
        assert_eq!(
            refuse_other_abis(plain.clone(), eperm).len(),
            plain.len() + 5
        );
        // arch: a mismatch jumps over the prefix onto seccompiler's first instruction.
        assert_eq!((prefix[0].code, prefix[0].k), (bpf::LD_W_ABS, 4));
        assert_eq!(
            (prefix[1].code, prefix[1].k, prefix[1].jt, prefix[1].jf),
            (bpf::JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 3)
        );
        // nr >= 0x4000_0000: EPERM; below it, on to seccompiler's program.
        assert_eq!((prefix[2].code, prefix[2].k), (bpf::LD_W_ABS, 0));
        assert_eq!(
            (prefix[3].code, prefix[3].k, prefix[3].jt, prefix[3].jf),
            (bpf::JMP_JGE_K, 0x4000_0000, 0, 1)
        );
        assert_eq!((prefix[4].code, prefix[4].k), (bpf::RET_K, 0x0005_0001));
        // clone3's program is left as seccompiler built it; both check the same arch.
        assert_eq!(programs[1][..3], plain[..3]);
        assert_eq!(plain[1].k, AUDIT_ARCH_X86_64);
    }

    /// Runs a classic BPF program (the instructions seccompiler and the prefix use) on a
    /// syscall with no arguments, as the kernel would, and returns its verdict.
    #[cfg(target_arch = "x86_64")]
    fn run(program: &[sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let insn = &program[pc];
            pc += 1;
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            match class {
                0x00 => {
                    a = match insn.k {
                        0 => nr,
                        4 => arch,
                        _ => 0,
                    }
                }
                0x04 if op == 0x50 => a &= insn.k,
                0x05 if op == 0x00 => pc += usize::try_from(insn.k).unwrap_or(usize::MAX),
                0x05 => {
                    let taken = match op {
                        0x10 => a == insn.k,
                        0x20 => a > insn.k,
                        0x30 => a >= insn.k,
                        0x40 => a & insn.k != 0,
                        _ => panic!("jump {:#x}", insn.code),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                0x06 => return insn.k,
                _ => panic!("instruction {:#x}", insn.code),
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_prefixed_program_refuses_x32_and_keeps_native_verdicts() {
        let programs = default_profile(&[]).unwrap_or_default();
        let program = &programs[0];
        let eperm = libc::SECCOMP_RET_ERRNO | 1;
        let nr = |n: libc::c_long| u32::try_from(n).unwrap_or(u32::MAX);
        let x86_64 = AUDIT_ARCH_X86_64;
        assert_eq!(
            run(program, x86_64, nr(libc::SYS_getpid)),
            libc::SECCOMP_RET_ALLOW
        );
        assert_eq!(run(program, x86_64, nr(libc::SYS_keyctl)), eperm);
        assert_eq!(run(program, x86_64, nr(libc::SYS_io_uring_setup)), eperm);
        for x32 in [libc::SYS_getpid, libc::SYS_keyctl, libc::SYS_mount, 272] {
            assert_eq!(
                run(program, x86_64, X32_SYSCALL_BIT | nr(x32)),
                eperm,
                "x32 {x32}"
            );
        }
        // Another arch (i386's int 0x80) still meets seccompiler's arch check.
        let i386 = 3 | 0x4000_0000;
        assert_eq!(
            run(program, i386, X32_SYSCALL_BIT | 39),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        assert_eq!(run(program, i386, 20), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn the_profile_builds_for_this_arch_and_caps_unlock_rules() {
        let plain = default_profile(&[]).map(|p| p.iter().map(Vec::len).sum::<usize>());
        let admin =
            default_profile(&[cap::SYS_ADMIN]).map(|p| p.iter().map(Vec::len).sum::<usize>());
        assert!(
            matches!((plain, admin), (Ok(a), Ok(b)) if a > b),
            "SYS_ADMIN lifts rules"
        );
    }
}
