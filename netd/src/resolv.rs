//! `/etc/resolv.conf`: a symlink to `/run/berth/resolv.conf`, which netd rewrites whole.

use std::net::IpAddr;
use std::path::Path;

const RUN_RESOLV: &str = "/run/berth/resolv.conf";
const ETC_RESOLV: &str = "/etc/resolv.conf";

pub fn render(servers: &[IpAddr], search: &[String]) -> String {
    let mut text = String::from("# Written by berth's netd.\n");
    for server in servers {
        text.push_str(&format!("nameserver {server}\n"));
    }
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    text
}

/// Writes the file atomically and points `/etc/resolv.conf` at it.
pub fn write(servers: &[IpAddr], search: &[String]) -> std::io::Result<()> {
    let run = Path::new(RUN_RESOLV);
    if let Some(dir) = run.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let staging = run.with_extension("partial");
    std::fs::write(&staging, render(servers, search))?;
    std::fs::rename(&staging, run)?;
    let etc = Path::new(ETC_RESOLV);
    if std::fs::read_link(etc).ok().as_deref() != Some(run) {
        let _ = std::fs::remove_file(etc);
        std::os::unix::fs::symlink(run, etc)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_servers_and_search() {
        assert_eq!(
            render(
                &[IpAddr::from([10, 0, 2, 3])],
                &["example.internal".to_string()]
            ),
            "# Written by berth's netd.\nnameserver 10.0.2.3\nsearch example.internal\n"
        );
    }
}
