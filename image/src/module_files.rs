//! Kernel modules as an image ships them: each `.ko` compressed on its own, the way `make
//! modules_install` does with `CONFIG_MODULE_COMPRESS_*`.
//!
//! Why per file and not only the initrd as a whole: the kernel unpacks the initrd into RAM and
//! keeps every file there, and most shipped modules (NICs and disks the machine may not have)
//! are never loaded. Compressed one by one they take a quarter of the room in the guest's
//! tmpfs; init decompresses the few it loads. Debian's kernels have no in-kernel module
//! decompression (`CONFIG_MODULE_DECOMPRESS` is off), so init does it in user space.
//!
//! Two codecs, by whether init loads the module on every boot:
//! - [`Codec::Gzip`] for those it always loads (power button, overlay, the containers' bridge
//!   and NAT, the manifest's own): miniz decompresses five times faster than XZ, which under
//!   TCG was a second of boot, and they are a small part of the set;
//! - [`Codec::Xz`] for the drivers coldplug loads only when their hardware is there: the
//!   smallest, read at most once.
//!
//! XZ compression is slow (seconds for a kernel's worth of modules), so each XZ file is cached
//! by the SHA-256 of the module, and later builds with the same kernel cost nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_oci::Digest;
use flate2::write::GzEncoder;
use lzma_rust2::{CheckType, XzOptions, XzWriter};

/// The dictionary the kernel's own module compression uses: a decoder allocates this much,
/// and no module needs more to compress well.
const DICTIONARY_MAX: u32 = 1 << 20;
const DICTIONARY_MIN: u32 = 4 << 10;

/// How a module file is compressed in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `.ko.gz`: quick to decompress, for modules loaded on every boot.
    Gzip,
    /// `.ko.xz`: smallest, for modules loaded only when their hardware is there.
    Xz,
}

impl Codec {
    /// What a compressed module's name gains.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Gzip => ".gz",
            Codec::Xz => ".xz",
        }
    }
}

/// The name a module file has in the image: `x.ko` becomes `x.ko.gz` or `x.ko.xz`, anything
/// else (a module the kernel's tree already compressed) keeps its name.
pub fn shipped_path(path: &Path, codec: Codec) -> PathBuf {
    if path.extension().is_some_and(|ext| ext == "ko") {
        let mut name = path.as_os_str().to_owned();
        name.push(codec.suffix());
        PathBuf::from(name)
    } else {
        path.to_path_buf()
    }
}

/// The bytes the image ships for the module at `path`: compressed when it is a plain `.ko`
/// (XZ from `cache_dir` when done before), else the file as it is.
pub fn shipped_bytes(path: &Path, codec: Codec, cache_dir: &Path) -> std::io::Result<Vec<u8>> {
    let module = std::fs::read(path)?;
    if shipped_path(path, codec) == path {
        return Ok(module);
    }
    if codec == Codec::Gzip {
        return gzip(&module);
    }
    let digest = Digest::sha256_of(&module);
    let cached = cache_dir
        .join("modules-xz")
        .join(format!("{}.ko.xz", digest.hex()));
    if let Ok(compressed) = std::fs::read(&cached) {
        return Ok(compressed);
    }
    let compressed = xz(&module)?;
    // The cache is an optimisation: a read-only cache directory only costs time.
    if let Some(dir) = cached.parent() {
        let temporary = cached.with_extension(format!("tmp{}", std::process::id()));
        let stored = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&temporary, &compressed))
            .and_then(|()| std::fs::rename(&temporary, &cached));
        if stored.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
    }
    Ok(compressed)
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data)?;
    encoder.finish()
}

/// XZ with a CRC32 check, as the kernel's `xz --check=crc32 --lzma2=dict=1MiB`, and a
/// dictionary no larger than the module.
fn xz(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut options = XzOptions::with_preset(6);
    options.set_check_sum_type(CheckType::Crc32);
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    options.lzma_options.dict_size = size
        .checked_next_power_of_two()
        .unwrap_or(DICTIONARY_MAX)
        .clamp(DICTIONARY_MIN, DICTIONARY_MAX);
    let mut writer = XzWriter::new(Vec::with_capacity(data.len() / 3), options)?;
    writer.write_all(data)?;
    writer.finish()
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn plain_modules_are_compressed_xz_cached_others_kept() {
        let dir = std::env::temp_dir().join(format!("berth-module-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let module: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let plain = dir.join("veth.ko");
        std::fs::write(&plain, &module).unwrap();
        let cache = dir.join("cache");

        assert_eq!(shipped_path(&plain, Codec::Xz), dir.join("veth.ko.xz"));
        let shipped = shipped_bytes(&plain, Codec::Xz, &cache).unwrap();
        assert!(shipped.len() < module.len() / 4, "{} bytes", shipped.len());
        let mut back = Vec::new();
        lzma_rust2::XzReader::new(shipped.as_slice(), false)
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, module);
        assert_eq!(
            std::fs::read_dir(cache.join("modules-xz")).unwrap().count(),
            1
        );
        assert_eq!(shipped_bytes(&plain, Codec::Xz, &cache).unwrap(), shipped);

        assert_eq!(shipped_path(&plain, Codec::Gzip), dir.join("veth.ko.gz"));
        let gzipped = shipped_bytes(&plain, Codec::Gzip, &cache).unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(gzipped.as_slice())
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, module);

        let already = dir.join("bridge.ko.xz");
        std::fs::write(&already, b"xz bytes").unwrap();
        assert_eq!(shipped_path(&already, Codec::Gzip), already);
        assert_eq!(
            shipped_bytes(&already, Codec::Gzip, &cache).unwrap(),
            b"xz bytes"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
