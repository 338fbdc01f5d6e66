//! `berth_manifest::Manifest::parse`, as init, netd and `berth build` call it on a manifest
//! file or an `apply` request. Besides not panicking: an error names the file; a manifest
//! that parses re-validates (its values printed back parse to the same values), every
//! dependency it names exists, and its start order places each container once, after what
//! it waits for.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use berth_manifest::{Cidr, ContainerName, Hostname, Manifest, NetworkMode, PortMapping};
use libfuzzer_sys::fuzz_target;

const ORIGIN: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let manifest = match Manifest::parse(text, Path::new(ORIGIN)) {
        Ok(manifest) => manifest,
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with(ORIGIN), "{message}");
            return;
        }
    };
    assert_eq!(
        Manifest::parse(text, Path::new(ORIGIN)).ok().as_ref(),
        Some(&manifest)
    );
    revalidates(&manifest);
    start_order_respects_dependencies(&manifest);
    let images: Vec<String> = manifest
        .containers
        .values()
        .map(|c| c.image.get_ref().clone())
        .collect();
    assert!(manifest
        .check_images(text, Path::new(ORIGIN), &images)
        .is_ok());
    let _ = (
        manifest.link_modules(),
        manifest.container_network_modules(),
        manifest.pulls_images(),
    );
});

/// Values the manifest holds, printed as a manifest would write them, parse back equal.
fn revalidates(manifest: &Manifest) {
    if let Some(hostname) = &manifest.hostname {
        assert_eq!(Hostname::new(hostname.as_str()).as_ref(), Ok(hostname));
    }
    for (name, container) in &manifest.containers {
        assert_eq!(ContainerName::new(name.as_str()).as_ref(), Ok(name));
        let mode = container.network_mode();
        assert_eq!(NetworkMode::parse(&mode.to_string()).as_ref(), Ok(mode));
        for port in &container.ports {
            let port = port.get_ref();
            assert_eq!(PortMapping::parse(&port.to_string()).as_ref(), Ok(port));
        }
    }
    let cidrs = manifest.network.iter().flat_map(|network| {
        network
            .interface
            .iter()
            .flat_map(|i| i.addresses.iter().chain(i.routes.iter().map(|r| &r.to)))
            .chain(std::iter::once(&network.bridge.subnet))
    });
    for cidr in cidrs {
        assert_eq!(Cidr::parse(&cidr.to_string()).as_ref(), Ok(cidr));
    }
}

fn start_order_respects_dependencies(manifest: &Manifest) {
    let order = manifest.start_order();
    assert_eq!(order.len(), manifest.containers.len(), "{order:?}");
    let mut started = BTreeSet::new();
    for name in order {
        let container = &manifest.containers[name];
        for (dependency, _) in &container.depends_on.0 {
            assert!(
                started.contains(dependency.get_ref().as_str()),
                "{} starts before {}, which it depends on",
                name.as_str(),
                dependency.get_ref()
            );
        }
        if let NetworkMode::Container(target) = container.network_mode() {
            assert!(started.contains(target.as_str()));
        }
        assert!(started.insert(name.as_str()), "{} twice", name.as_str());
    }
}
