//! `user = "..."`: a uid/gid pair or names looked up in the container's `/etc/passwd` and
//! `/etc/group`, as Docker resolves them.

use std::io::Read;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group of `/etc/group` that lists the user.
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next()?;
        let home = fields.next().unwrap_or("/");
        Some(PasswdEntry {
            name,
            uid,
            gid,
            home,
        })
    })
}

/// (name, gid, members) of each `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let gid = fields.next()?.parse().ok()?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .collect();
        Some((name, gid, members))
    })
}

/// Resolves `spec` (`None` is root) against the container's passwd and group files.
///
/// runc's rule: a part that parses as a number is an id and is never looked up as a name (an
/// image may name a user `1000` and give it uid 0); a numeric uid takes its gid and home from
/// the entry with that uid, if there is one. Any other part is looked up by name.
pub fn resolve_user(spec: Option<&str>, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let spec = spec.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid, name, home) = match user_part.parse::<u32>() {
        Ok(uid) => match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name), e.home.to_string()),
            // A numeric uid need not exist in /etc/passwd; its group is then root's.
            None => (uid, 0, None, "/".to_string()),
        },
        Err(_) => match passwd_entries(passwd).find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, Some(e.name), e.home.to_string()),
            None => {
                return Err(format!(
                    "user `{user_part}` is not in the container's /etc/passwd"
                ))
            }
        },
    };
    if let Some(group_part) = group_part {
        gid = resolve_group(group_part, group)?;
    }
    let additional_gids = match (name, group_part) {
        (Some(name), None) => group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| g)
            .collect(),
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// One group, by the same rule as the user: a number is a gid as it is (it need not be in
/// `/etc/group`), anything else a name looked up in `group`.
pub(crate) fn resolve_group(spec: &str, group: &str) -> Result<u32, String> {
    match spec.parse::<u32>() {
        Ok(gid) => Ok(gid),
        Err(_) => group_entries(group)
            .find(|(name, _, _)| *name == spec)
            .map(|(_, gid, _)| gid)
            .ok_or_else(|| format!("group `{spec}` is not in the container's /etc/group")),
    }
}

/// `group_add`: group names or numbers, as gids.
pub(crate) fn resolve_groups(groups: &[String], group: &str) -> Result<Vec<u32>, String> {
    groups.iter().map(|g| resolve_group(g, group)).collect()
}

/// The most of an account file that is read: far more than any real `/etc/passwd`, little
/// enough that an image cannot make the runtime allocate without bound.
pub const ACCOUNT_FILE_LIMIT: u64 = 4 << 20;

/// Reads the container's `/etc/passwd` or `/etc/group` (`path`) as it is before exec: only
/// if it is a regular file, and at most [`ACCOUNT_FILE_LIMIT`] bytes. A missing file reads
/// as empty (a numeric user needs none).
pub fn read_account_file(path: &Path) -> Result<String, String> {
    let bytes = read_regular_file(path, ACCOUNT_FILE_LIMIT, FollowLinks::Yes)?;
    // A stray non-UTF-8 byte (a Latin-1 GECOS field) must not hide every other entry.
    Ok(bytes
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default())
}

/// Whether [`read_regular_file`] follows a symbolic link at the path's last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowLinks {
    Yes,
    /// A link there is refused: for files on a medium someone else wrote (a NoCloud seed's
    /// Rock Ridge links may name `/dev/zero` or a FIFO of the host).
    No,
}

/// Reads a file someone else controls (an image's account files, a manifest handed in from
/// outside): only if it is a regular file, and at most `limit` bytes; `None` when it is
/// missing. Anything else is refused with its path and what it is.
///
/// It is opened with `O_NONBLOCK` (a FIFO planted there opens without waiting for a writer,
/// and is then refused, never read: a read would block, and PID 1 may be the reader),
/// `O_NOCTTY` (a terminal never becomes ours) and `O_CLOEXEC`; what it is, is checked on the
/// opened descriptor, not on the path.
pub fn read_regular_file(
    path: &Path,
    limit: u64,
    follow: FollowLinks,
) -> Result<Option<Vec<u8>>, String> {
    let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    if follow == FollowLinks::No {
        flags |= OFlag::O_NOFOLLOW;
    }
    let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(Errno::ELOOP) if follow == FollowLinks::No => {
            return Err(format!(
                "{} is a symbolic link, not a regular file: refused",
                path.display()
            ))
        }
        Err(e) => return Err(format!("open {}: {e}", path.display())),
    };
    let stat = nix::sys::stat::fstat(&fd).map_err(|e| format!("fstat {}: {e}", path.display()))?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(format!(
            "{} is {}, not a regular file: refused",
            path.display(),
            file_kind(kind)
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("read {}: {e}", path.display()))?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(format!(
            "{} is larger than {limit} bytes: refused",
            path.display()
        ));
    }
    Ok(Some(bytes))
}

fn file_kind(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "of an unknown type",
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\nlogs:x:4:www,other\n";

    #[test]
    fn names_numbers_and_supplementary_groups() {
        let root = resolve_user(None, PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let www = resolve_user(Some("www"), PASSWD, GROUP).unwrap();
        assert_eq!((www.uid, www.gid, www.additional_gids), (33, 33, vec![4]));
        let numeric = resolve_user(Some("1000:1000"), PASSWD, GROUP).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (1000, 1000));
        let lone = resolve_user(Some("1234"), "", "").unwrap();
        assert_eq!((lone.uid, lone.gid), (1234, 0));
        let named_group = resolve_user(Some("www:logs"), PASSWD, GROUP).unwrap();
        assert_eq!((named_group.gid, named_group.additional_gids), (4, vec![]));
        assert!(resolve_user(Some("nobody"), PASSWD, GROUP).is_err());
        assert!(resolve_user(Some("www:nogroup"), PASSWD, GROUP).is_err());
    }

    /// An image whose users and groups are named like numbers, with ids that differ.
    const NUMERIC_PASSWD: &str =
        "1000:x:0:0:sneaky:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n";
    const NUMERIC_GROUP: &str = "0:x:1000:\nuser:x:1000:\nwheel:x:10:user\n33:x:0:\n";

    #[test]
    fn a_number_is_a_uid_never_a_name() {
        let user = resolve_user(Some("1000"), NUMERIC_PASSWD, NUMERIC_GROUP).unwrap();
        assert_eq!(
            user.uid, 1000,
            "`1000` is uid 1000, not the user named 1000"
        );
        // gid, home and supplementary groups come from the entry with that uid.
        assert_eq!((user.gid, user.home.as_str()), (1000, "/home/user"));
        assert_eq!(user.additional_gids, vec![10]);
        // A name is still a name.
        let named = resolve_user(Some("user"), NUMERIC_PASSWD, NUMERIC_GROUP).unwrap();
        assert_eq!(named.uid, 1000);
    }

    #[test]
    fn a_number_is_a_gid_never_a_name() {
        let user = resolve_user(Some("user:33"), NUMERIC_PASSWD, NUMERIC_GROUP).unwrap();
        assert_eq!(user.gid, 33, "`33` is gid 33, not the group named 33");
        let user = resolve_user(Some("1000:0"), NUMERIC_PASSWD, NUMERIC_GROUP).unwrap();
        assert_eq!((user.uid, user.gid), (1000, 0));
        let added = resolve_groups(&["0".into(), "33".into(), "wheel".into()], NUMERIC_GROUP);
        assert_eq!(added.unwrap(), vec![0, 33, 10]);
        assert!(resolve_groups(&["nogroup".into()], NUMERIC_GROUP).is_err());
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("berth-user-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn account_files_are_read_only_when_regular() {
        let dir = scratch("regular");
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, PASSWD).unwrap();
        assert_eq!(read_account_file(&passwd).unwrap(), PASSWD);
        assert_eq!(read_account_file(&dir.join("missing")).unwrap(), "");
        let err = read_account_file(&dir).unwrap_err();
        assert!(
            err.contains("a directory") && err.contains("berth-user-test"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let fifo = dir.join("passwd");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o644)).unwrap();
        // With no writer, a blocking open or read would never return: run it on a thread
        // and give it a deadline, so a regression fails instead of hanging the suite.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_account_file(&path));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("read_account_file blocked on a FIFO");
        let err = result.unwrap_err();
        assert!(err.contains("a FIFO") && err.contains("passwd"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_oversized_account_file_is_refused() {
        let dir = scratch("big");
        let big = dir.join("group");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(ACCOUNT_FILE_LIMIT + 1).unwrap();
        let err = read_account_file(&big).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        file.set_len(ACCOUNT_FILE_LIMIT).unwrap();
        assert!(read_account_file(&big).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
