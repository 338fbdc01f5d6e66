//! The host side of berth: turn a manifest into a bootable image and boot it under QEMU.
//!
//! The `berth` binary is a thin CLI over this library, so tests and benchmarks call the same
//! code the operator runs.

pub mod api_cert;
pub mod assemble;
pub mod debian;
pub mod disk;
pub mod elf;
pub mod images;
pub mod initramfs;
pub mod kernel;
pub mod kernel_build;
pub mod module_files;
pub mod progress;
pub mod remote;
pub mod run;
pub mod run_container;
pub mod sample;

pub use assemble::{
    build, read_metadata, BuildError, BuildOptions, DiskOptions, ImageMetadata, KernelChoice,
};
pub use disk::DiskFormat;
