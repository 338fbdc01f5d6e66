//! `user = "..."`: a uid/gid pair or names looked up in the container's `/etc/passwd` and
//! `/etc/group`, as Docker resolves them.

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
pub fn resolve_user(spec: Option<&str>, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let spec = spec.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry =
        passwd_entries(passwd).find(|e| e.name == user_part || user_part.parse() == Ok(e.uid));
    let (uid, mut gid, name, home) = match (entry, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name), e.home.to_string()),
        // A numeric uid need not exist in /etc/passwd; its group is then root's.
        (None, Ok(uid)) => (uid, 0, None, "/".to_string()),
        (None, Err(_)) => {
            return Err(format!(
                "user `{user_part}` is not in the container's /etc/passwd"
            ))
        }
    };
    if let Some(group_part) = group_part {
        gid = match group_part.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == group_part)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    format!("group `{group_part}` is not in the container's /etc/group")
                })?,
        };
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

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
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
}
