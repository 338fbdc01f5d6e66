//! Checks that a guest binary is what the image needs: a static executable for the arch.

use std::path::{Path, PathBuf};

use berth_arch::Arch;
use object::elf::{FileHeader64, PT_INTERP};
use object::read::elf::{FileHeader, ProgramHeader};
use object::Endianness;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("{} is not a 64-bit ELF file: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error("{} is built for ELF machine {found}, not {arch} (machine {expected})", path.display())]
    WrongMachine {
        path: PathBuf,
        arch: Arch,
        expected: u16,
        found: u16,
    },
    #[error("{} is dynamically linked (it has an ELF interpreter); guest binaries must be static musl builds", path.display())]
    Dynamic { path: PathBuf },
}

/// What the ELF header says about a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfFacts {
    pub machine: u16,
    pub has_interpreter: bool,
}

pub fn read_facts(path: &Path, data: &[u8]) -> Result<ElfFacts, ElfError> {
    let not_elf = |reason: object::read::Error| ElfError::NotElf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let header = FileHeader64::<Endianness>::parse(data).map_err(not_elf)?;
    let endian = header.endian().map_err(not_elf)?;
    let has_interpreter = header
        .program_headers(endian, data)
        .map_err(not_elf)?
        .iter()
        .any(|segment| segment.p_type(endian) == PT_INTERP);
    Ok(ElfFacts {
        machine: header.e_machine(endian).0,
        has_interpreter,
    })
}

/// Refuses anything but a static executable for `arch`.
pub fn check_static_executable(path: &Path, data: &[u8], arch: Arch) -> Result<(), ElfError> {
    let facts = read_facts(path, data)?;
    if facts.machine != arch.elf_machine() {
        return Err(ElfError::WrongMachine {
            path: path.to_path_buf(),
            arch,
            expected: arch.elf_machine(),
            found: facts.machine,
        });
    }
    if facts.has_interpreter {
        return Err(ElfError::Dynamic {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}
