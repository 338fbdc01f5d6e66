//! OCI image layouts for berth: read the layouts `umoci` and `skopeo` write, verify every
//! digest, and unpack image layers into directories that overlayfs stacks as lower layers.
//!
//! PID 1 uses it in the guest to turn an image store into root filesystems; the host-side
//! image builder uses it to bake images into that store. Reading an image goes
//! [`Layout::open`], [`Layout::resolve`], then for each of [`Image::layers`]
//! [`Layout::read_descriptor`] and [`unpack_layer_into_store`].

mod decompress;
mod digest;
mod entry_path;
mod error;
mod image;
mod layout;
mod mapped;
mod nodes;
mod room;
mod store;
mod unpack;

pub use decompress::{
    MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP,
    MEDIA_TYPE_LAYER_TAR_ZSTD,
};
pub use digest::Digest;
pub use error::OciError;
pub use image::{
    ContainerConfig, Descriptor, ImageConfig, ImageIndex, ImageManifest, Platform, RootFs,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_IMAGE_INDEX,
    MEDIA_TYPE_IMAGE_MANIFEST, REF_NAME_ANNOTATION,
};
pub use layout::{index_json, Image, Layout, INDEX_FILE, OCI_LAYOUT_FILE, OCI_LAYOUT_FILE_CONTENT};
pub use mapped::MappedBlob;
pub use room::{store_reserve, Room};
pub use store::{layer_dir, unpack_layer_into_store, unpack_layer_into_store_with_limits};
pub use unpack::{
    unpack_layer, unpack_layer_with_limits, LayerStats, UnpackLimits, MAX_LAYER_BYTES,
    MAX_LAYER_ENTRIES,
};
