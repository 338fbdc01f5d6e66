//! `modules.alias`: which module drives a device, by the device's modalias, with the same
//! shell-style patterns (`*`, `?`, `[...]`) modprobe matches.

/// One `alias <pattern> <module>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    pub pattern: String,
    pub module: String,
}

pub fn parse_aliases(text: &str) -> Vec<Alias> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("alias"), Some(pattern), Some(module)) => Some(Alias {
                    pattern: pattern.to_string(),
                    module: module.replace('-', "_"),
                }),
                _ => None,
            }
        })
        .collect()
}

/// fnmatch(3) without flags: `*` any run, `?` any one character, `[abc]`, `[a-z]`, `[!a]`.
/// Byte-wise, as modprobe matches: modaliases are ASCII. Called for every alias pattern of
/// every shipped module against every device at coldplug, so it allocates nothing and gives
/// up at the first literal byte that differs.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Iterative matcher with one backtrack point for the last `*`, as fnmatch implementations do.
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => text.get(t).and_then(|c| class_match(pattern, p, *c)),
            Some(c) if Some(c) == text.get(t) => Some(p + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                t += 1;
            }
            (None, Some((star_p, star_t))) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            (None, None) => return false,
        }
    }
    pattern.iter().skip(p).all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == b'['`; the index after the
/// class when it matches.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<usize> {
    let mut i = start + 1;
    let negated = matches!(pattern.get(i), Some(b'!') | Some(b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let current = *pattern.get(i)?;
        if current == b']' && !first {
            break;
        }
        first = false;
        if pattern.get(i + 1) == Some(&b'-') && pattern.get(i + 2).is_some_and(|e| *e != b']') {
            let end = *pattern.get(i + 2)?;
            matched |= current <= c && c <= end;
            i += 3;
        } else {
            matched |= current == c;
            i += 1;
        }
    }
    (matched != negated).then_some(i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_as_modprobe_uses_them() {
        assert!(glob_match(
            "virtio:d00000001v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(glob_match(
            "pci:v00001AF4d00001000sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(glob_match("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("x[0-9]y", "x5y"));
        assert!(!glob_match("x[!0-9]y", "x5y"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", ""));
        assert!(glob_match("*a*b", "xxaxxb"));
        assert!(!glob_match("*a*b", "xxaxxbc"));
    }

    #[test]
    fn alias_lines() {
        let aliases =
            parse_aliases("# comment\nalias fs-vfat vfat\nalias virtio:d00000001v* virtio-net\n");
        assert_eq!(aliases.len(), 2);
        assert_eq!(
            aliases.get(1).map(|a| a.module.as_str()),
            Some("virtio_net")
        );
    }
}
