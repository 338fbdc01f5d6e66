//! `berthctl apply FILE`: converge the running containers to a new manifest. The file is
//! validated whole first (syntax, fields, dependencies, images), so a bad one changes
//! nothing. Then removed containers stop, changed ones stop and start with their new
//! settings, added ones start, and the rest are left alone (same process, same PID).
//! Stops do not wait: a retired container stays supervised until it has stopped, and its
//! replacement waits for that (`dependencies`).
//!
//! Only containers change on a running host: the other parts of a manifest (hostname,
//! network, mounts, boot) are reported as taking effect at the next boot.

use std::path::Path;
use std::time::Instant;

use berth_control::Changes;
use berth_manifest::Manifest;

use super::lifecycle::{Reason, State, Then};
use super::{Supervised, Supervisor};
use crate::event::Event;

/// The manifest without its containers: what `apply` compares to tell what waits for a boot.
pub fn host_settings(manifest: &Manifest) -> Manifest {
    Manifest {
        containers: Default::default(),
        ..manifest.clone()
    }
}

/// The names of the host settings that differ.
fn differing_settings(old: &Manifest, new: &Manifest) -> Vec<String> {
    let mut differ = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            differ.push(name.to_string());
        }
    };
    check("hostname", old.hostname == new.hostname);
    check("boot", old.boot == new.boot);
    check("mount", old.mounts == new.mounts);
    check("userns", old.userns == new.userns);
    check("network", old.network == new.network);
    differ
}

impl Supervisor {
    /// Validates `text` and converges to it; the error names the file, line and field.
    pub fn apply(&mut self, text: &str, origin: &Path) -> Result<Changes, String> {
        let manifest = Manifest::parse(text, origin).map_err(|e| e.to_string())?;
        manifest
            .check_images(text, origin, &self.images.references())
            .map_err(|e| e.to_string())?;
        let mut changes = Changes {
            next_boot: differing_settings(&self.host_settings, &host_settings(&manifest)),
            ..Changes::default()
        };
        let now = Instant::now();
        // Stop what goes or changes.
        for index in (0..self.containers.len()).rev() {
            let Some(c) = self.containers.get_mut(index) else {
                continue;
            };
            if c.retiring {
                continue;
            }
            let name = c.name().to_string();
            match manifest.containers.get(&c.name) {
                Some(config) if *config == c.config => changes.unchanged.push(name),
                Some(_) => changes.changed.push(name),
                None => changes.removed.push(name),
            }
            if manifest.containers.get(&c.name) == Some(&c.config) {
                continue;
            }
            c.retiring = true;
            self.request_stop(index, Then::Stay(Reason::Apply), "apply", now);
        }
        let mut old: Vec<Supervised> = std::mem::take(&mut self.containers);
        for name in manifest.start_order() {
            let Some(config) = manifest.containers.get(name) else {
                continue;
            };
            match old.iter().position(|c| c.name == *name && !c.retiring) {
                Some(at) => self.containers.push(old.swap_remove(at)),
                None => {
                    if !changes.changed.iter().any(|n| n == name.as_str()) {
                        changes.added.push(name.as_str().to_string());
                    }
                    self.containers.push(Supervised::new(name, config.clone()));
                }
            }
        }
        // Retired containers still stopping stay supervised until they have stopped.
        self.containers.extend(
            old.into_iter()
                .filter(|c| c.retiring && c.state != State::Stopped),
        );
        for list in [
            &mut changes.added,
            &mut changes.removed,
            &mut changes.changed,
            &mut changes.unchanged,
        ] {
            list.sort();
        }
        self.networks.adopt(&manifest);
        self.pulls.adopt(&manifest);
        self.host_settings = host_settings(&manifest);
        Event::new("applied")
            .field("added", list(&changes.added))
            .field("removed", list(&changes.removed))
            .field("changed", list(&changes.changed))
            .field("unchanged", changes.unchanged.len())
            .emit();
        self.advance(now);
        Ok(changes)
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(",")
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn host_settings_that_differ_are_named() {
        let parse = |t: &str| Manifest::parse(t, Path::new("m.toml")).unwrap();
        let old = parse("hostname = \"a\"\n[containers.x]\nimage = \"i:1\"\n");
        let new = parse("hostname = \"b\"\n[containers.y]\nimage = \"i:1\"\n");
        assert_eq!(
            differing_settings(&host_settings(&old), &host_settings(&new)),
            ["hostname"]
        );
        assert!(differing_settings(&old, &old).is_empty());
    }
}
