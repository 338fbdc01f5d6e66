//! The integration tests: one test binary, so that `--test-threads=2` keeps both cores busy
//! with a QEMU boot each across the whole suite (one binary per file left a core idle at the
//! end of every file), and the tests link once.

#![expect(
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a failed check panics"
)]

mod ab_update;
mod api;
mod apply;
mod boot;
mod cli;
mod console_xoff;
mod container_network;
mod containers;
mod control_abuse;
mod control_port;
mod demo;
mod devices;
mod dhcp_hostile;
mod dhcp_server;
mod disk;
mod docs;
mod examples;
mod exec_stdin;
mod health;
mod host_boundary;
mod hostile_metadata;
mod hostile_registry;
mod image_import;
mod image_unpack;
mod install;
mod isolation;
mod kernel_config;
mod links;
mod log_shipping;
mod network;
mod operate;
mod output_flood;
mod pid1;
mod process_boundary;
mod registry_pull;
mod static_init;
mod stops;
mod time;

mod watchdog;
