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

/// The two BPF programs of the default profile for a process holding `capabilities`: the
/// EPERM list, and clone3's ENOSYS.
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
mod tests {
    use super::*;

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
