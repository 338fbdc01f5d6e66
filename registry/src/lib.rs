//! Pulling images from OCI registries into berth's image store.
//!
//! # Why a separate process
//!
//! In the guest, images are pulled by `berth-pull`, the small static binary built from this
//! crate, made for init to start as a child process and to read its one JSON line on stdout.
//! PID 1 stays single-threaded and small, and never blocks: a registry that answers slowly
//! holds up a child process, not the supervisor. TLS (rustls with its `ring` provider, and
//! Mozilla's roots) is linked into the puller only; init links no TLS and no HTTP at all. A
//! pull that crashes costs one failed child, not the host.
//!
//! # How a pull goes
//!
//! 1. [`Reference::parse`] reads Docker's syntax and normalises it (`nginx` is
//!    `docker.io/library/nginx:latest`, fetched from `registry-1.docker.io`).
//! 2. A [`Client`] speaks the distribution API over HTTPS (plain HTTP only for registries
//!    named insecure), anonymously until a `401` names a Bearer token endpoint or Basic
//!    credentials ([`auth`]); tokens are cached per repository for the run. Connection
//!    failures, 5xx and 429 are retried with exponential backoff.
//! 3. [`pull`] fetches the manifest; for an index it picks the guest's platform
//!    ([`select_manifest`]). Manifests fetched by digest are verified, and every manifest's
//!    sha256 is computed for storing. Layer media types berth cannot unpack are refused
//!    before anything is downloaded.
//! 4. Config and layers stream into `partial/`, hashed as they arrive, and are renamed into
//!    `blobs/sha256/` only once size and digest check out ([`store`]); an interrupted
//!    download resumes with `Range`. Blobs the store has are not downloaded again.
//! 5. The manifest is stored and named in `index.json` with the `ref.name` the caller gives
//!    (the string a manifest's container `image` field holds), so `berth_oci::Layout` resolves
//!    it, and unpacking stays with `berth_oci`: this crate never unpacks a layer.
//!
//! [`gc`] drops the images not kept and the blobs no kept image uses; [`usage`] tells what
//! each image takes up, alone and shared.

mod artifact;
pub mod auth;
mod blob;
mod client;
mod error;
mod platform;
mod pull;
mod reference;
pub mod store;

pub use artifact::{pull_artifact, ArtifactReport};
pub use auth::{parse_www_authenticate, AuthFile, Challenge, Credentials};
pub use client::{Client, ClientConfig, FetchedManifest, RetryPolicy};
pub use error::RegistryError;
pub use platform::{platform_name, select_manifest, Arch};
pub use pull::{pull, Event, PullReport};
pub use reference::{Reference, ReferenceError, DEFAULT_TAG, DOCKER_HUB};
pub use store::{
    gc, usage, GcReport, ImageUsage, LockMode, Store, Usage, PARTIAL_DIR, PULLED_ANNOTATION,
};
