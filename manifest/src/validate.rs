//! Checks that relate several parts of the manifest: dependencies exist, form no cycle and
//! wait only for what can happen, health checks exist where something relies on them,
//! images exist in the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::closest;
use crate::{Condition, ContainerName, Manifest, ManifestError, NetworkMode};

/// `network_mode = "container:NAME"` names another container of the manifest, and `ports`
/// are published only from the bridge, each host port once.
pub(crate) fn networks(
    manifest: &Manifest,
    text: &str,
    origin: &Path,
) -> Result<(), ManifestError> {
    let mut published: BTreeMap<(Option<std::net::Ipv4Addr>, u16, crate::PortProtocol), String> =
        BTreeMap::new();
    for (name, container) in &manifest.containers {
        if let Some(mode) = &container.network_mode {
            if let NetworkMode::Container(target) = mode.get_ref() {
                let field = format!("containers.{}.network_mode", name.as_str());
                let message = if target == name {
                    Some(format!(
                        "container `{}` cannot join its own network",
                        name.as_str()
                    ))
                } else if !manifest.containers.contains_key(target) {
                    let mut message =
                        format!("no container `{}` in this manifest", target.as_str());
                    if let Some(suggestion) = closest(
                        target.as_str(),
                        manifest.containers.keys().map(ContainerName::as_str),
                    ) {
                        message.push_str(&format!(" (did you mean `{suggestion}`?)"));
                    }
                    Some(message)
                } else {
                    None
                };
                if let Some(message) = message {
                    return Err(ManifestError::at(
                        origin,
                        text,
                        mode.span(),
                        &field,
                        message,
                    ));
                }
            }
        }
        for (position, port) in container.ports.iter().enumerate() {
            let field = format!("containers.{}.ports[{position}]", name.as_str());
            let mapping = port.get_ref();
            if *container.network_mode() != NetworkMode::Bridge {
                return Err(ManifestError::at(
                    origin,
                    text,
                    port.span(),
                    &field,
                    format!(
                        "ports are published from the bridge; this container's network_mode is `{}`",
                        container.network_mode()
                    ),
                ));
            }
            let key = (mapping.host_ip, mapping.host_port, mapping.protocol);
            if let Some(other) = published.insert(key, name.as_str().to_string()) {
                return Err(ManifestError::at(
                    origin,
                    text,
                    port.span(),
                    &field,
                    format!("host port {mapping} is already published by `{other}`"),
                ));
            }
        }
    }
    Ok(())
}

/// A registry's `username` comes with its `password`.
pub(crate) fn registries(
    manifest: &Manifest,
    text: &str,
    origin: &Path,
) -> Result<(), ManifestError> {
    for (host, settings) in &manifest.registries {
        if let (Some(username), None) = (&settings.username, &settings.password) {
            return Err(ManifestError::at(
                origin,
                text,
                username.span(),
                &format!("registries.{host}.username"),
                "a username needs its `password`".to_string(),
            ));
        }
    }
    Ok(())
}

/// `restart_on_unhealthy = true` needs an enabled health check: without one the container
/// can never turn unhealthy, and the operator surely meant something else.
pub(crate) fn health(manifest: &Manifest, text: &str, origin: &Path) -> Result<(), ManifestError> {
    for (name, container) in &manifest.containers {
        let Some(flag) = &container.restart_on_unhealthy else {
            continue;
        };
        if !*flag.get_ref() || container.enabled_healthcheck().is_some() {
            continue;
        }
        let message = if container.healthcheck.is_some() {
            "the container's healthcheck is disabled, so it can never be unhealthy"
        } else {
            "needs a `healthcheck`: without one the container can never be unhealthy"
        };
        return Err(ManifestError::at(
            origin,
            text,
            flag.span(),
            &format!("containers.{}.restart_on_unhealthy", name.as_str()),
            message.to_string(),
        ));
    }
    Ok(())
}

/// A container in another's network namespace starts once that one has started, as if it
/// said so in `depends_on`.
pub(crate) fn imply_network_dependencies(manifest: &mut Manifest) {
    for container in manifest.containers.values_mut() {
        let Some(mode) = &container.network_mode else {
            continue;
        };
        let NetworkMode::Container(target) = mode.get_ref() else {
            continue;
        };
        let listed = container
            .depends_on
            .0
            .iter()
            .any(|(d, _)| d.get_ref() == target.as_str());
        if !listed {
            let dependency = toml::Spanned::new(mode.span(), target.as_str().to_string());
            container
                .depends_on
                .0
                .push((dependency, Condition::ServiceStarted));
        }
    }
}

pub(crate) fn dependencies(
    manifest: &Manifest,
    text: &str,
    origin: &Path,
) -> Result<(), ManifestError> {
    for (name, container) in &manifest.containers {
        for (position, (dependency, condition)) in container.depends_on.0.iter().enumerate() {
            let field = format!("containers.{}.depends_on[{position}]", name.as_str());
            let wanted = dependency.get_ref();
            if wanted == crate::TIME_SYNCED && !manifest.time.enabled() {
                return Err(ManifestError::at(
                    origin,
                    text,
                    dependency.span(),
                    &field,
                    "`time-synced` never comes: `[time] servers = []` turns network time off"
                        .to_string(),
                ));
            }
            if wanted == crate::NETWORK_ONLINE || wanted == crate::TIME_SYNCED {
                continue;
            }
            let target = ContainerName::new(wanted)
                .ok()
                .and_then(|d| manifest.containers.get(&d));
            let Some(target) = target else {
                let mut message = format!("no container `{wanted}` in this manifest");
                if let Some(suggestion) = closest(
                    wanted,
                    manifest.containers.keys().map(ContainerName::as_str),
                ) {
                    message.push_str(&format!(" (did you mean `{suggestion}`?)"));
                }
                return Err(ManifestError::at(
                    origin,
                    text,
                    dependency.span(),
                    &field,
                    message,
                ));
            };
            if wanted == name.as_str() {
                return Err(ManifestError::at(
                    origin,
                    text,
                    dependency.span(),
                    &field,
                    format!("container `{wanted}` cannot depend on itself"),
                ));
            }
            if *condition == Condition::ServiceHealthy && target.enabled_healthcheck().is_none() {
                let why = if target.healthcheck.is_some() {
                    format!("`{wanted}`'s healthcheck is disabled")
                } else {
                    format!("`{wanted}` has no healthcheck")
                };
                return Err(ManifestError::at(
                    origin,
                    text,
                    dependency.span(),
                    &format!("containers.{}.depends_on", name.as_str()),
                    format!("{why}, so `service_healthy` can never be met"),
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(manifest) {
        let first = cycle.first().cloned().unwrap_or_default();
        let second = cycle.get(1).cloned().unwrap_or_default();
        let span = manifest
            .containers
            .get(&ContainerName::new(&first).map_err(|m| cycle_error(origin, &m))?)
            .and_then(|c| c.depends_on.0.iter().find(|(d, _)| d.get_ref() == &second))
            .map(|(d, _)| d.span())
            .unwrap_or(0..0);
        return Err(ManifestError::at(
            origin,
            text,
            span,
            &format!("containers.{first}.depends_on"),
            format!("dependency cycle: {}", cycle.join(" -> ")),
        ));
    }
    Ok(())
}

fn cycle_error(origin: &Path, message: &str) -> ManifestError {
    ManifestError::at(origin, "", 0..0, "containers", message.to_string())
}

fn edges(manifest: &Manifest) -> BTreeMap<&str, Vec<&str>> {
    manifest
        .containers
        .iter()
        .map(|(name, c)| {
            let deps = c
                .depends_on
                .0
                .iter()
                .map(|(d, _)| d.get_ref().as_str())
                .filter(|d| *d != crate::NETWORK_ONLINE && *d != crate::TIME_SYNCED)
                .collect();
            (name.as_str(), deps)
        })
        .collect()
}

/// A dependency cycle as `a, b, ..., a`, if there is one.
fn find_cycle(manifest: &Manifest) -> Option<Vec<String>> {
    let edges = edges(manifest);
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(start, &edges, &mut path, &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn visit<'a>(
    node: &'a str,
    edges: &BTreeMap<&'a str, Vec<&'a str>>,
    path: &mut Vec<&'a str>,
    done: &mut BTreeSet<&'a str>,
) -> Option<Vec<String>> {
    if let Some(position) = path.iter().position(|n| *n == node) {
        let mut cycle: Vec<String> = path.iter().skip(position).map(|n| n.to_string()).collect();
        cycle.push(node.to_string());
        return Some(cycle);
    }
    if done.contains(node) {
        return None;
    }
    path.push(node);
    for next in edges.get(node).into_iter().flatten() {
        if let Some(cycle) = visit(next, edges, path, done) {
            return Some(cycle);
        }
    }
    path.pop();
    done.insert(node);
    None
}

pub(crate) fn start_order(manifest: &Manifest) -> Vec<&ContainerName> {
    let edges = edges(manifest);
    let mut order: Vec<&ContainerName> = Vec::with_capacity(manifest.containers.len());
    let mut started = BTreeSet::new();
    // Repeatedly take, by name, every container whose dependencies are all placed; a cycle
    // (refused at parse time) would simply stop the loop.
    loop {
        let ready: Vec<&ContainerName> = manifest
            .containers
            .keys()
            .filter(|name| !started.contains(name.as_str()))
            .filter(|name| {
                edges
                    .get(name.as_str())
                    .into_iter()
                    .flatten()
                    .all(|d| started.contains(d))
            })
            .collect();
        if ready.is_empty() {
            return order;
        }
        for name in ready {
            started.insert(name.as_str());
            order.push(name);
        }
    }
}

pub(crate) fn images(
    manifest: &Manifest,
    text: &str,
    origin: &Path,
    known: &[String],
) -> Result<(), ManifestError> {
    for (name, container) in &manifest.containers {
        let wanted = container.image.get_ref();
        if known.iter().any(|k| k == wanted) || container.pull_policy() != crate::PullPolicy::Never
        {
            continue;
        }
        let mut message = if known.is_empty() {
            format!("no image `{wanted}`: the image store is empty (give images to `berth build --image name:tag=DIR`)")
        } else {
            format!(
                "no image `{wanted}` in the image store (it has: {})",
                known.join(", ")
            )
        };
        if container.pull_policy.is_some() {
            message.push_str(" and `pull_policy = \"never\"` forbids pulling it");
        }
        if let Some(suggestion) = closest(wanted, known.iter().map(String::as_str)) {
            message.push_str(&format!(" (did you mean `{suggestion}`?)"));
        }
        return Err(ManifestError::at(
            origin,
            text,
            container.image.span(),
            &format!("containers.{}.image", name.as_str()),
            message,
        ));
    }
    Ok(())
}
