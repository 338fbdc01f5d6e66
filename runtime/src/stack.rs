//! The stacks the runtime's cloned children run on until they exec: anonymous mappings with
//! a guard page below them, as threads' stacks have (glibc, musl, Rust's `std::thread`).
//!
//! A plain `Vec` as a stack has nothing below it but the heap: a setup step that recursed or
//! put a large buffer on the stack would write over the child's copy of the heap, silently,
//! in the middle of the steps that drop privileges. With the guard page it dies of SIGSEGV
//! on the first byte past the end, and the start fails with that.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{mmap_anonymous, mprotect, munmap, MapFlags, ProtFlags};

/// A guard page and `size` bytes of stack above it, unmapped on drop.
#[derive(Debug)]
pub struct CloneStack {
    base: NonNull<std::ffi::c_void>,
    /// The whole mapping: guard page and stack.
    mapped: usize,
    guard: usize,
}

impl CloneStack {
    /// Maps `size` bytes (rounded up to pages) of stack and the guard page below them.
    /// Untouched pages are never allocated.
    pub fn new(size: usize) -> nix::Result<CloneStack> {
        let page = page_size();
        let stack = size.div_ceil(page).max(1).saturating_mul(page);
        let mapped = stack.saturating_add(page);
        let length = NonZeroUsize::new(mapped).ok_or(nix::errno::Errno::EINVAL)?;
        // SAFETY: a new private anonymous mapping at an address the kernel chooses: it
        // overlaps no memory Rust knows about.
        let base = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE,
            )
        }?;
        let stack = CloneStack {
            base,
            mapped,
            guard: page,
        };
        // SAFETY: the first page of the mapping just made, which nothing references.
        unsafe { mprotect(base, page, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The usable stack, above the guard page, for `clone`.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `mapped` bytes long, readable and writable past its first
        // `guard` bytes, and lives as long as `self`, which this borrow holds exclusively.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().cast::<u8>().add(self.guard),
                self.mapped - self.guard,
            )
        }
    }
}

impl Drop for CloneStack {
    fn drop(&mut self) {
        // SAFETY: the mapping `new` made, unmapped once; no slice of it outlives `self`.
        let _ = unsafe { munmap(self.base, self.mapped) };
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    /// Seen failing with the `mprotect` left out: the child's write below the stack went
    /// through and it exited 0.
    #[test]
    fn the_stack_is_writable_and_the_page_below_it_is_not() {
        let mut stack = CloneStack::new(64 << 10).unwrap();
        let slice = stack.as_mut_slice();
        assert!(slice.len() >= 64 << 10);
        slice[0] = 1;
        let last = slice.len() - 1;
        slice[last] = 2;
        let below = slice.as_mut_ptr().wrapping_sub(1);
        // A child that writes one byte below the stack dies of SIGSEGV: the guard page.
        let mut child_stack = CloneStack::new(64 << 10).unwrap();
        let child = Box::new(move || {
            // SAFETY: the write is meant to fault: the child is a copy of this process (no
            // CLONE_VM) and dies of it.
            unsafe { below.write_volatile(7) };
            0
        });
        // SAFETY: no CLONE_VM, so the child works on a copy of the test's memory and touches
        // only the guard page, taking no lock another thread of the harness could hold.
        let pid = unsafe {
            nix::sched::clone(
                child,
                child_stack.as_mut_slice(),
                nix::sched::CloneFlags::empty(),
                Some(nix::sys::signal::Signal::SIGCHLD as i32),
            )
        }
        .unwrap();
        let status = waitpid(pid, None).unwrap();
        assert!(
            matches!(
                status,
                WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGSEGV, _)
            ),
            "{status:?}"
        );
    }
}
