//! From a layer's media type to a reader of its uncompressed tar stream.

use std::io::{self, Read};

use flate2::read::MultiGzDecoder;
use ruzstd::decoding::{FrameDecoder, StreamingDecoder};

pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TYPE_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Zstd skippable frames carry metadata (zstd:chunked puts its table of contents there).
const ZSTD_SKIPPABLE_MAGIC_MIN: u32 = 0x184D_2A50;
const ZSTD_SKIPPABLE_MAGIC_MAX: u32 = 0x184D_2A5F;
const ZSTD_SKIPPABLE_HEADER_LEN: usize = 8;

/// The uncompressed tar stream of a layer blob, or `None` for a media type we do not unpack.
pub(crate) fn tar_stream<'a>(blob: &'a [u8], media_type: &str) -> Option<Box<dyn Read + 'a>> {
    match media_type {
        MEDIA_TYPE_LAYER_TAR => Some(Box::new(blob)),
        // Multi-member gzip (pigz, concatenated streams) is valid gzip: read every member.
        MEDIA_TYPE_LAYER_TAR_GZIP | MEDIA_TYPE_DOCKER_LAYER_TAR_GZIP => {
            Some(Box::new(MultiGzDecoder::new(blob)))
        }
        MEDIA_TYPE_LAYER_TAR_ZSTD => Some(Box::new(ZstdFrames::new(blob))),
        _ => None,
    }
}

/// Decodes every frame of a zstd stream in turn: ruzstd's decoder stops after one frame, while
/// the format (and zstd:chunked layers) allow many, with skippable frames between them.
struct ZstdFrames<'a> {
    remaining: &'a [u8],
    frame: Option<StreamingDecoder<&'a [u8], FrameDecoder>>,
}

impl<'a> ZstdFrames<'a> {
    fn new(blob: &'a [u8]) -> ZstdFrames<'a> {
        ZstdFrames {
            remaining: blob,
            frame: None,
        }
    }

    /// Steps over a skippable frame at the start of `remaining`; false if there is none.
    fn skip_skippable_frame(&mut self) -> io::Result<bool> {
        let Some(&[m0, m1, m2, m3, l0, l1, l2, l3]) =
            self.remaining.first_chunk::<ZSTD_SKIPPABLE_HEADER_LEN>()
        else {
            return Ok(false);
        };
        let magic = u32::from_le_bytes([m0, m1, m2, m3]);
        if !(ZSTD_SKIPPABLE_MAGIC_MIN..=ZSTD_SKIPPABLE_MAGIC_MAX).contains(&magic) {
            return Ok(false);
        }
        let length = u32::from_le_bytes([l0, l1, l2, l3]);
        let end = usize::try_from(length)
            .ok()
            .and_then(|length| length.checked_add(ZSTD_SKIPPABLE_HEADER_LEN));
        self.remaining = end
            .and_then(|end| self.remaining.get(end..))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "zstd skippable frame runs past the end of the blob",
                )
            })?;
        Ok(true)
    }
}

impl Read for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(frame) = &mut self.frame {
                let count = frame.read(buf)?;
                if count > 0 {
                    return Ok(count);
                }
                self.remaining = frame.get_ref();
                self.frame = None;
            }
            if self.skip_skippable_frame()? {
                continue;
            }
            if self.remaining.is_empty() {
                return Ok(0);
            }
            let frame = StreamingDecoder::new(self.remaining).map_err(io::Error::other)?;
            self.frame = Some(frame);
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    fn decode(blob: &[u8], media_type: &str) -> Vec<u8> {
        let mut out = Vec::new();
        tar_stream(blob, media_type)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn zstd_frames_and_skippable_frames_decode_in_order() {
        let first = vec![1u8; 70_000];
        let second = b"second frame".to_vec();
        let mut blob = compress_to_vec(&first[..], CompressionLevel::Fastest);
        blob.extend_from_slice(&0x184D_2A5Au32.to_le_bytes());
        blob.extend_from_slice(&3u32.to_le_bytes());
        blob.extend_from_slice(b"toc");
        blob.extend(compress_to_vec(&second[..], CompressionLevel::Fastest));
        let mut expected = first;
        expected.extend(second);
        assert_eq!(decode(&blob, MEDIA_TYPE_LAYER_TAR_ZSTD), expected);
    }

    #[test]
    fn truncated_skippable_frame_is_an_error() {
        let mut blob = 0x184D_2A50u32.to_le_bytes().to_vec();
        blob.extend_from_slice(&100u32.to_le_bytes());
        let mut out = Vec::new();
        let result = tar_stream(&blob, MEDIA_TYPE_LAYER_TAR_ZSTD)
            .unwrap()
            .read_to_end(&mut out);
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn unknown_media_types_are_not_decoded() {
        assert!(tar_stream(b"", "application/vnd.oci.image.layer.v1.tar+bzip2").is_none());
    }
}
