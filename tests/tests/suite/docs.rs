//! The documentation keeps up with the code (no QEMU): every key of the manifest is in
//! `docs/manifest.md` and every event kind in `docs/events.md`, so that adding one without
//! documenting it fails here.
//!
//! The keys are read from the source of `manifest/src/*.rs`: the named fields of each struct
//! that derives `Deserialize`, as serde names them (`rename_all`, `rename`); `flatten` fields
//! add no key of their own, and a struct with `try_from = "X"` adds none either (its keys are
//! `X`'s). Values (enum variants) and types with a hand-written `Deserialize` are not read.
//! The event kinds are the literal arguments of `Event::new("...")` in the daemons' sources.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use berth_tests::workspace_root;

/// Structs of `manifest/src` that derive `Deserialize` but are no table of the manifest,
/// by name, with why. None at present: every such struct is read from the manifest.
const NOT_MANIFEST_TABLES: &[(&str, &str)] = &[];

/// The crates whose events are documented, by their source directory.
const EVENT_SOURCES: &[&str] = &[
    "init/src",
    "netd/src",
    "apid/src",
    "registry/src",
    "update/src",
];

/// Calls of `Event::new` whose kind is not a literal there, each with the helper whose literal
/// first argument is the kind: `(file, helper call)`. A new non-literal call fails the test
/// until it is listed here.
const KIND_HELPERS: &[(&str, &str)] = &[
    // init's own `Event` wraps the shared one; its callers are `Event::new("...")` too.
    ("init/src/event.rs", "Event::new("),
    // `dhcp-bound` and `dhcp-renewed` share one function.
    ("netd/src/dhcp.rs", "bound_event("),
];

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The path of `path` under the workspace, for messages.
fn relative(path: &Path) -> String {
    let root = workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The `.rs` files under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// A file's source without its unit tests (a top-level `#[cfg(test)]` and what follows).
fn without_tests(source: &str) -> &str {
    match source.find("\n#[cfg(test)]\n") {
        Some(at) => &source[..at],
        None => source,
    }
}

/// The inline code spans (`` `...` ``) of a Markdown text, fenced blocks left out.
fn code_spans(markdown: &str) -> BTreeSet<String> {
    let mut spans = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.insert(inside.to_string());
        }
    }
    spans
}

/// The `name = "value"` and bare `name` items of a `#[serde(...)]` attribute.
fn serde_items(attribute: &str) -> Vec<(String, Option<String>)> {
    let Some(inside) = attribute
        .strip_prefix("#[serde(")
        .and_then(|rest| rest.strip_suffix(")]"))
    else {
        return Vec::new();
    };
    inside
        .split(',')
        .map(|item| match item.split_once('=') {
            Some((name, value)) => (
                name.trim().to_string(),
                Some(value.trim().trim_matches('"').to_string()),
            ),
            None => (item.trim().to_string(), None),
        })
        .collect()
}

fn serde_value(attributes: &[String], name: &str) -> Option<String> {
    attributes
        .iter()
        .flat_map(|a| serde_items(a))
        .find(|(item, _)| item == name)
        .and_then(|(_, value)| value)
}

fn serde_flag(attributes: &[String], name: &str) -> bool {
    attributes
        .iter()
        .flat_map(|a| serde_items(a))
        .any(|(item, _)| item == name)
}

/// A field's name as serde's `rename_all` spells it.
fn renamed(field: &str, rule: Option<&str>) -> String {
    let words: Vec<&str> = field.split('_').collect();
    let capitalised = |w: &&str| {
        let mut chars = w.chars();
        chars
            .next()
            .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
            .unwrap_or_default()
    };
    match rule {
        None | Some("snake_case") => field.to_string(),
        Some("lowercase") => field.to_lowercase(),
        Some("UPPERCASE") => field.to_uppercase(),
        Some("kebab-case") => field.replace('_', "-"),
        Some("SCREAMING_SNAKE_CASE") => field.to_uppercase(),
        Some("SCREAMING-KEBAB-CASE") => field.replace('_', "-").to_uppercase(),
        Some("PascalCase") => words.iter().map(capitalised).collect(),
        Some("camelCase") => {
            let mut out = words.first().map(|w| w.to_string()).unwrap_or_default();
            out.extend(words.iter().skip(1).map(capitalised));
            out
        }
        Some(other) => panic!("serde rename_all = {other:?} is not known to this test"),
    }
}

/// A struct's name, when `line` declares one with named fields (`{` on the line).
fn struct_with_fields(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("pub ").unwrap_or(line);
    let rest = match rest.strip_prefix("pub(") {
        Some(restricted) => restricted.split_once(") ")?.1,
        None => rest,
    };
    let rest = rest.strip_prefix("struct ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    rest[end..].contains('{').then(|| &rest[..end])
}

/// A field's name, when `line` (inside a struct's braces) starts one.
fn field_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("pub ").unwrap_or(line);
    let rest = match rest.strip_prefix("pub(") {
        Some(restricted) => restricted.split_once(") ")?.1,
        None => rest,
    };
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    let after = &rest[end..];
    (end > 0 && after.starts_with(':') && !after.starts_with("::"))
        .then(|| rest[..end].trim_start_matches("r#"))
}

/// How many more `open` than `close` characters `line` holds.
fn balance(line: &str, open: char, close: char) -> i32 {
    line.chars()
        .map(|c| match c {
            c if c == open => 1,
            c if c == close => -1,
            _ => 0,
        })
        .sum()
}

/// Reads the attribute starting at `lines[*i]` (it may span lines) and moves past it.
fn attribute(lines: &[&str], i: &mut usize) -> String {
    let mut text = String::new();
    let mut depth = 0i32;
    while let Some(line) = lines.get(*i) {
        let line = line.trim();
        text.push_str(line);
        *i += 1;
        depth += balance(line, '[', ']');
        if depth <= 0 {
            break;
        }
    }
    text
}

/// One manifest key, and where it is declared.
struct Key {
    key: String,
    origin: String,
}

/// The manifest keys the structs of one file declare.
fn manifest_keys(path: &Path, keys: &mut Vec<Key>, excluded_seen: &mut BTreeSet<String>) {
    let source = read(path);
    let lines: Vec<&str> = without_tests(&source).lines().collect();
    let mut attributes: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(line) = lines.get(i) {
        let line = line.trim();
        if line.starts_with("#[") {
            attributes.push(attribute(&lines, &mut i));
            continue;
        }
        i += 1;
        if line.is_empty() || line.starts_with("//") {
            continue;
        }
        let outer = std::mem::take(&mut attributes);
        let Some(name) = struct_with_fields(line) else {
            continue;
        };
        let deserialized = outer.iter().any(|a| {
            a.starts_with("#[derive(")
                && a.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|word| word == "Deserialize")
        });
        // Skip the body whatever happens to the struct, field by field at depth 1.
        let mut depth = 1i32;
        let mut field_attributes: Vec<String> = Vec::new();
        while depth > 0 {
            let Some(body_line) = lines.get(i) else {
                break;
            };
            let body_line = body_line.trim();
            if depth == 1 && body_line.starts_with("#[") {
                field_attributes.push(attribute(&lines, &mut i));
                continue;
            }
            i += 1;
            if depth == 1 && !body_line.starts_with("//") {
                if let Some(field) = field_name(body_line) {
                    let attrs = std::mem::take(&mut field_attributes);
                    let counted = deserialized
                        && serde_value(&outer, "try_from").is_none()
                        && !serde_flag(&attrs, "flatten")
                        && !NOT_MANIFEST_TABLES.iter().any(|(n, _)| *n == name);
                    if counted {
                        let key = serde_value(&attrs, "rename").unwrap_or_else(|| {
                            renamed(field, serde_value(&outer, "rename_all").as_deref())
                        });
                        keys.push(Key {
                            key,
                            origin: format!("{}: struct {name}, field {field}", relative(path)),
                        });
                    }
                }
            }
            depth += balance(body_line, '{', '}');
        }
        if deserialized && NOT_MANIFEST_TABLES.iter().any(|(n, _)| *n == name) {
            excluded_seen.insert(name.to_string());
        }
    }
}

/// The string literal at the start of `text` (after blanks), if it is one.
fn leading_literal(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('"')?;
    rest.split_once('"').map(|(literal, _)| literal)
}

/// One event kind, and where it is emitted.
struct Kind {
    kind: String,
    origin: String,
}

/// The event kinds one file emits; non-literal `Event::new` calls not in [`KIND_HELPERS`] go
/// to `unlisted`.
fn event_kinds(path: &Path, kinds: &mut Vec<Kind>, unlisted: &mut Vec<String>) {
    let source = read(path);
    let source = without_tests(&source);
    let name = relative(path);
    let helpers: Vec<&str> = KIND_HELPERS
        .iter()
        .filter(|(file, _)| *file == name)
        .map(|(_, helper)| *helper)
        .collect();
    let line_of = |at: usize| source[..at].matches('\n').count() + 1;
    for call in std::iter::once("Event::new(").chain(helpers.iter().copied()) {
        for (at, _) in source.match_indices(call) {
            let after = &source[at + call.len()..];
            match leading_literal(after) {
                Some(kind) => kinds.push(Kind {
                    kind: kind.to_string(),
                    origin: format!("{name}:{}", line_of(at)),
                }),
                None if call == "Event::new(" && !helpers.is_empty() => {}
                None if call == "Event::new(" => {
                    unlisted.push(format!("{name}:{}", line_of(at)));
                }
                None => {}
            }
        }
    }
}

/// Whether `span` names `key`: the key itself, or a dotted path (`boot.modules`,
/// `…vlan`) that ends in it.
fn names_key(span: &str, key: &str) -> bool {
    span == key
        || span
            .strip_suffix(key)
            .is_some_and(|head| head.ends_with('.') || head.ends_with('…'))
}

#[test]
fn every_manifest_key_is_in_docs_manifest_md() {
    let root = workspace_root();
    let docs = root.join("docs/manifest.md");
    let spans = code_spans(&read(&docs));
    let mut keys = Vec::new();
    let mut excluded_seen = BTreeSet::new();
    for path in rust_files(&root.join("manifest/src")) {
        manifest_keys(&path, &mut keys, &mut excluded_seen);
    }
    assert!(
        keys.len() > 50,
        "only {} manifest keys found: the reading of manifest/src is broken",
        keys.len()
    );
    for (name, _) in NOT_MANIFEST_TABLES {
        assert!(
            excluded_seen.contains(*name),
            "NOT_MANIFEST_TABLES names `{name}`, which no longer derives Deserialize"
        );
    }
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !spans.iter().any(|span| names_key(span, &k.key)))
        .map(|k| format!("  `{}` ({})", k.key, k.origin))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not mention these manifest keys (as `key`, `table.key` or `…key`):\n{}",
        relative(&docs),
        missing.join("\n")
    );
}

#[test]
fn every_event_kind_is_in_docs_events_md() {
    let root = workspace_root();
    let docs = root.join("docs/events.md");
    let spans = code_spans(&read(&docs));
    let mut kinds = Vec::new();
    let mut unlisted = Vec::new();
    for dir in EVENT_SOURCES {
        let dir = root.join(dir);
        if dir.is_dir() {
            for path in rust_files(&dir) {
                event_kinds(&path, &mut kinds, &mut unlisted);
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "`Event::new` with a kind that is not a literal, in a file KIND_HELPERS does not list \
         (add the helper whose literal argument is the kind):\n  {}",
        unlisted.join("\n  ")
    );
    assert!(
        kinds.len() > 50,
        "only {} event kinds found: the reading of the sources is broken",
        kinds.len()
    );
    let mut reported = BTreeSet::new();
    let missing: Vec<String> = kinds
        .iter()
        .filter(|k| !spans.contains(&k.kind) && reported.insert(k.kind.clone()))
        .map(|k| format!("  `{}` ({})", k.kind, k.origin))
        .collect();
    assert!(
        missing.is_empty(),
        "{} does not mention these event kinds (as `kind`):\n{}",
        relative(&docs),
        missing.join("\n")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings, fenced blocks left out.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut found = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The README and every file of `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = vec![root.join("README.md")];
    let docs = fs::read_dir(root.join("docs")).unwrap_or_else(|e| panic!("docs/: {e}"));
    for entry in docs {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|ext| ext == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

#[test]
fn the_readme_and_docs_links_lead_somewhere_and_every_docs_file_is_linked() {
    let root = workspace_root();
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap_or_else(|e| panic!("{e}"));
    let mut broken = Vec::new();
    let mut linked = BTreeSet::new();
    for file in markdown_files() {
        let text = read(&file);
        let mut fenced = false;
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            for target in link.captures_iter(line).filter_map(|c| c.get(1)) {
                let target = target.as_str();
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let dir = file.parent().unwrap_or(&root);
                let to = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let at = format!("{}:{}: `{target}`", relative(&file), number + 1);
                let Ok(to) = to.canonicalize() else {
                    broken.push(format!("{at}: no such file"));
                    continue;
                };
                if !fragment.is_empty() && !anchors(&read(&to)).contains(fragment) {
                    broken.push(format!("{at}: no such heading"));
                }
                if file.file_name().is_some_and(|n| n == "README.md") {
                    linked.insert(to);
                }
            }
        }
    }
    for file in markdown_files() {
        let file = file.canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let readme = root.join("README.md").canonicalize().ok();
        if Some(&file) != readme.as_ref() && !linked.contains(&file) {
            broken.push(format!("{}: not linked from the README", relative(&file)));
        }
    }
    assert!(broken.is_empty(), "links:\n  {}", broken.join("\n  "));
}

/// The README's five-minute tour is a manifest berth accepts (images aside: those are the
/// store's business at build time).
#[test]
fn the_readme_tour_manifest_is_valid() {
    let readme = read(&workspace_root().join("README.md"));
    let tour = readme
        .split("## A five-minute tour of a manifest")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|block| block.split("\n```").next())
        .unwrap_or_else(|| panic!("README.md has no tour with a toml block"));
    if let Err(err) = berth_manifest::Manifest::parse(tour, Path::new("README.md")) {
        panic!("the README's tour manifest is refused: {err}\n{tour}");
    }
}
