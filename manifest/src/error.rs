//! Manifest errors that point at the file, line, column and field at fault.

use std::fmt;
use std::path::{Path, PathBuf};

/// The marker toml's `Spanned` leaves in serde paths; it is not a field the operator wrote.
const SPANNED_PATH_SEGMENT: &str = ".$__serde_spanned_private_value";
/// How far apart (in edits) a misspelt key may be from a known one to be suggested.
const SUGGESTION_MAX_DISTANCE: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot read the manifest: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", Located(self))]
    Invalid {
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The dotted path of the field (`boot.modules[1]`); empty for a syntax error.
        field: String,
        message: String,
    },
}

struct Located<'a>(&'a ManifestError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ManifestError::Invalid {
            file,
            line,
            column,
            field,
            message,
        } = self.0
        else {
            return Ok(());
        };
        write!(f, "{}:{line}:{column}: ", file.display())?;
        if !field.is_empty() {
            write!(f, "{field}: ")?;
        }
        f.write_str(message)
    }
}

impl ManifestError {
    /// An error about the value at `span` of `text`, found after parsing (by a check that
    /// needs more than the value itself, such as "this module exists in the kernel").
    pub fn at(
        file: &Path,
        text: &str,
        span: std::ops::Range<usize>,
        field: &str,
        message: String,
    ) -> ManifestError {
        let (line, column) = line_and_column(text, span.start);
        ManifestError::Invalid {
            file: file.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }

    pub(crate) fn from_toml(
        file: &Path,
        text: &str,
        field: &str,
        err: &toml::de::Error,
    ) -> ManifestError {
        let offset = err.span().map_or(0, |span| span.start);
        let (line, column) = line_and_column(text, offset);
        let field = field.replace(SPANNED_PATH_SEGMENT, "");
        let field = match field.as_str() {
            // A syntax error has no serde path: name what is written on that line instead.
            "" | "." => key_on_line(text, line),
            _ => field,
        };
        let mut message = err.message().trim_end().to_string();
        if let Some(suggestion) = suggest_known_key(&message) {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        ManifestError::Invalid {
            file: file.to_path_buf(),
            line,
            column,
            field,
            message,
        }
    }
}

/// The table header or key written on 1-based `line`: `containers.web` for
/// `[containers.web`, `hostname` for `hostname = ...`.
fn key_on_line(text: &str, line: usize) -> String {
    let Some(source) = text.lines().nth(line.saturating_sub(1)) else {
        return String::new();
    };
    let source = source.trim();
    let key = match source.strip_prefix('[') {
        Some(header) => header
            .trim_start_matches('[')
            .split(']')
            .next()
            .unwrap_or(header),
        None => source.split('=').next().unwrap_or_default(),
    };
    key.trim().trim_matches('"').to_string()
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// For serde's "unknown field `x`, expected `a`, `b`" messages, the closest known key.
fn suggest_known_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    closest(unknown, expected.split('`').skip(1).step_by(2))
}

/// The candidate nearest to `wanted`, if it is near enough to be a likely misspelling.
pub(crate) fn closest<'a>(
    wanted: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .map(|known| (edit_distance(wanted, known), known))
        .filter(|(distance, _)| *distance <= SUGGESTION_MAX_DISTANCE)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known.to_string())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute =
                previous.get(j).copied().unwrap_or(usize::MAX - 1) + usize::from(ca != *cb);
            let delete = previous.get(j + 1).copied().unwrap_or(usize::MAX - 1) + 1;
            let insert = current.last().copied().unwrap_or(usize::MAX - 1) + 1;
            current.push(substitute.min(delete).min(insert));
        }
        previous = current;
    }
    previous.last().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_key_only_when_close() {
        assert_eq!(
            suggest_known_key("unknown field `hostnme`, expected `hostname` or `boot`"),
            Some("hostname".to_string())
        );
        assert_eq!(
            suggest_known_key("unknown field `zzzzzzzzz`, expected `hostname` or `boot`"),
            None
        );
    }

    #[test]
    fn syntax_errors_name_the_key_on_their_line() {
        assert_eq!(key_on_line("a = 1\n[containers.web\n", 2), "containers.web");
        assert_eq!(key_on_line("[[mount]]\n", 1), "mount");
        assert_eq!(key_on_line("hostname = \"x\n", 1), "hostname");
        assert_eq!(key_on_line("", 3), "");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_and_column("a\nbé = 1", 5), (2, 3));
        assert_eq!(line_and_column("", 0), (1, 1));
    }
}
