//! `kernel`: berth on its own kernel (`berth kernel build`: drivers built in, no modules)
//! against Debian's default kernel for the arch, same manifest, same QEMU flags: time from
//! QEMU's start to init's ready line, and the initrd's size. Runs are interleaved.

use std::path::Path;

use berth_arch::Arch;
use berth_image::kernel::default_cache_dir;
use berth_image::{kernel_build, BuildOptions, KernelChoice};
use berth_qemu::MachineConfig;
use regex::Regex;
use serde::Serialize;

use crate::stats::Summary;
use crate::{time_to_line, work_dir};

#[derive(Debug, Serialize)]
pub struct KernelFigures {
    pub arch: String,
    pub runs: usize,
    pub berth_kernel_release: String,
    pub debian_kernel_release: String,
    pub berth_kernel_ready_s: Summary,
    pub debian_kernel_ready_s: Summary,
    /// berth kernel / Debian kernel.
    pub ready_ratio: f64,
    pub berth_kernel_initrd_kib: u64,
    pub debian_kernel_initrd_kib: u64,
    pub initrd_ratio: f64,
    pub berth_kernel_image_kib: u64,
    pub debian_kernel_image_kib: u64,
}

fn kib(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len() / 1024)
}

pub fn bench(arch: Arch, runs: usize, manifest: &Path) -> Result<KernelFigures, String> {
    let dir = work_dir().join(format!("kernel-{}", arch.name()));
    let built = kernel_build::build(arch, &default_cache_dir(), &dir.join("berth-kernel"))
        .map_err(|e| format!("berth kernel build: {e}"))?;
    let options = |kernel: KernelChoice, out: &str| BuildOptions {
        arch,
        manifest: manifest.to_path_buf(),
        out: dir.join(out),
        kernel,
        init: None,
        netd: None,
        berthctl: None,
        puller: None,
        images: Vec::new(),
        extra_modules: Vec::new(),
        disk: None,
        update_key: None,
    };
    let debian = berth_image::build(&options(
        KernelChoice::DebianDefault {
            cache_dir: default_cache_dir(),
        },
        "debian",
    ))
    .map_err(|e| format!("berth build (Debian kernel): {e}"))?;
    let own = berth_image::build(&options(
        KernelChoice::Paths {
            image: built.image.clone(),
            modules_dir: None,
        },
        "own",
    ))
    .map_err(|e| format!("berth build (berth's kernel): {e}"))?;
    let config = |out: &str, metadata: &berth_image::ImageMetadata| {
        MachineConfig::new(
            arch,
            &dir.join(out).join(&metadata.kernel),
            &dir.join(out).join(&metadata.initrd),
            &dir.join(format!("logs-{out}")),
        )
    };
    let (debian_config, own_config) = (config("debian", &debian), config("own", &own));
    let ready = Regex::new(r"^berth event=ready ").map_err(|e| e.to_string())?;
    let (mut own_times, mut debian_times) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        own_times.push(time_to_line(&own_config, &ready)?.0.as_secs_f64());
        debian_times.push(time_to_line(&debian_config, &ready)?.0.as_secs_f64());
        eprintln!(
            "  {arch} run {run}/{runs}: berth's kernel {:.2} s, Debian's {:.2} s",
            own_times.last().copied().unwrap_or_default(),
            debian_times.last().copied().unwrap_or_default()
        );
    }
    let own_ready = Summary::of(&own_times);
    let debian_ready = Summary::of(&debian_times);
    let own_initrd = kib(&dir.join("own").join(&own.initrd));
    let debian_initrd = kib(&dir.join("debian").join(&debian.initrd));
    Ok(KernelFigures {
        arch: arch.name().to_string(),
        runs,
        berth_kernel_release: built.release,
        debian_kernel_release: debian.kernel_release.clone(),
        ready_ratio: own_ready.mean / debian_ready.mean.max(f64::MIN_POSITIVE),
        berth_kernel_ready_s: own_ready,
        debian_kernel_ready_s: debian_ready,
        initrd_ratio: own_initrd as f64 / (debian_initrd.max(1)) as f64,
        berth_kernel_initrd_kib: own_initrd,
        debian_kernel_initrd_kib: debian_initrd,
        berth_kernel_image_kib: kib(&dir.join("own").join(&own.kernel)),
        debian_kernel_image_kib: kib(&dir.join("debian").join(&debian.kernel)),
    })
}
