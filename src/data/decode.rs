//! A picture's bytes as upright 8-bit RGB: what a person sees in a photo viewer.
//!
//! - **Formats**: JPEG (CMYK and greyscale too), PNG (8 and 16 bits, greyscale, palette), WebP,
//!   TIFF, BMP and GIF (its first frame) through the `image` crate; HEIC/HEIF and AVIF through
//!   the system's libheif, loaded when the first such picture comes ([`super::heif`]).
//! - **Orientation**: the EXIF `Orientation` tag (all eight values) is applied, whatever
//!   format carries it (JPEG's APP1, PNG's `eXIf`, WebP's `EXIF`, TIFF's own tag), as `image`
//!   reads it; in HEIF and AVIF the rotation and mirror boxes (`irot`, `imir`) are what counts,
//!   and libheif applies them.
//! - **Alpha** is composited on white ([`BACKGROUND`]), as a viewer shows a transparent
//!   picture on a white page, so that hidden colours under transparent pixels never reach the
//!   backbone.
//! - **Bounded**: a picture of more than [`MAX_PIXELS`] pixels is refused from its header,
//!   before anything is decoded, and decoders may allocate at most [`MAX_DECODER_BYTES`]; a
//!   decompression bomb is an error naming the file, never the end of the process.
//!
//! Rows of the feature store are keyed by the bytes decoded ([`super::content`]); a picture
//! whose orientation tag turns it is keyed apart from its bytes alone, because lastlayer
//! before 0.2 decoded such pictures lying on their side ([`orientation`]).

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, RgbaImage};

use super::heif;

/// The largest picture decoded, in pixels: Pillow's threshold for its `DecompressionBombError`
/// (twice its `MAX_IMAGE_PIXELS`), about 179 megapixels, so that what Pillow refuses lastlayer
/// refuses too. A 100-megapixel photo (12,240 x 8,160) is decoded.
pub const MAX_PIXELS: u64 = 178_956_970;

/// The most a decoder may allocate for one picture (`image`'s `Limits::max_alloc`): 1 GiB, room
/// for the largest picture [`MAX_PIXELS`] allows as 8-bit RGB (537 MB) or a 100-megapixel one
/// as 16-bit RGBA (800 MB).
pub const MAX_DECODER_BYTES: u64 = 1 << 30;

/// The colour transparent pixels are composited on: white.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

/// The formats lastlayer reads, for messages.
pub const FORMATS: &str = "JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC/HEIF or AVIF";

/// Why a picture could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are in no format lastlayer knows.
    #[error("{0} bytes in no picture format lastlayer reads ({FORMATS})")]
    UnknownFormat(usize),
    /// Too many pixels ([`MAX_PIXELS`]).
    #[error(
        "{width}x{height} pixels ({:.0} megapixels) is over the limit of {:.0} megapixels (Pillow's too); downscale it first",
        *width as f64 * *height as f64 / 1e6,
        MAX_PIXELS as f64 / 1e6
    )]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The format needs a system library that could not be loaded.
    #[error("{format} pictures are decoded by {library}, which could not be loaded ({why}); install it (Debian or Ubuntu: apt-get install {package}; macOS: brew install libheif), or convert the picture to JPEG or PNG")]
    MissingLibrary {
        /// `HEIC`, `AVIF`...
        format: &'static str,
        /// The library's name.
        library: &'static str,
        /// The Debian package that has it.
        package: &'static str,
        /// What loading it said.
        why: String,
    },
    /// libheif could not decode the picture.
    #[error("{format}: {message}")]
    Heif {
        /// `HEIC`, `AVIF`...
        format: &'static str,
        /// libheif's message.
        message: String,
    },
    /// The `image` crate could not decode the picture.
    #[error("{0}")]
    Image(#[from] image::ImageError),
}

/// Decodes `bytes` into an upright 8-bit RGB picture (see the module docs).
pub fn decode(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let (picture, orientation) = decode_stored(bytes)?;
    if orientation == Orientation::NoTransforms {
        return Ok(picture);
    }
    let mut picture = DynamicImage::ImageRgb8(picture);
    picture.apply_orientation(orientation);
    Ok(picture.into_rgb8())
}

/// Decodes `bytes` into 8-bit RGB as stored, with the orientation that turns it upright, for
/// callers that turn it themselves ([`crate::data::decode_picture`] does it in the copy that
/// makes its tensor planar). HEIF and AVIF come back upright, with
/// [`Orientation::NoTransforms`].
pub fn decode_stored(bytes: &[u8]) -> Result<(RgbImage, Orientation), DecodeError> {
    if let Some(format) = heif::format_of(bytes) {
        return Ok((heif::decode(bytes, format)?, Orientation::NoTransforms));
    }
    let mut decoder = decoder(bytes)?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    // A tag that cannot be read is no tag: the picture as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let picture = DynamicImage::from_decoder(decoder)?;
    Ok((flatten(picture), orientation))
}

/// The orientation [`decode`] applies to `bytes`, read from the header alone:
/// [`Orientation::NoTransforms`] for a picture without the tag, and for HEIF and AVIF, whose
/// own boxes libheif applies (lastlayer never read those before it applied orientation).
pub fn orientation(bytes: &[u8]) -> Orientation {
    if heif::format_of(bytes).is_some() {
        return Orientation::NoTransforms;
    }
    decoder(bytes).ok().and_then(|mut d| d.orientation().ok()).unwrap_or(Orientation::NoTransforms)
}

/// Reads a picture's header: its format (by content, not by name), width and height, without
/// decoding it. `Err` says why it is not a picture lastlayer can read.
pub fn probe(bytes: &[u8]) -> Result<(u32, u32), DecodeError> {
    if let Some(format) = heif::format_of(bytes) {
        return heif::dimensions(bytes, format);
    }
    let d = decoder(bytes)?;
    Ok(d.dimensions())
}

/// Refuses pictures over [`MAX_PIXELS`].
pub fn check_size(width: u32, height: u32) -> Result<(), DecodeError> {
    if u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

/// `image`'s decoder for `bytes`, its format guessed from the content, under the limits.
fn decoder(bytes: &[u8]) -> Result<impl ImageDecoder + '_, DecodeError> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(image::ImageError::IoError)?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat(bytes.len()));
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    reader.limits(limits);
    Ok(reader.into_decoder()?)
}

/// 8-bit RGB, any alpha composited on [`BACKGROUND`], any 16-bit or float channel rounded to
/// 8 bits (as `image` converts).
pub fn flatten(picture: DynamicImage) -> RgbImage {
    if picture.color().has_alpha() {
        composite(&picture.into_rgba8())
    } else {
        picture.into_rgb8()
    }
}

/// `rgba` over [`BACKGROUND`]: `c·a + bg·(1 - a)`, rounded.
pub fn composite(rgba: &RgbaImage) -> RgbImage {
    let (w, h) = rgba.dimensions();
    let mut out = Vec::with_capacity(w as usize * h as usize * 3);
    for px in rgba.as_raw().chunks_exact(4) {
        let a = u32::from(px[3]);
        for c in 0..3 {
            out.push(((u32::from(px[c]) * a + u32::from(BACKGROUND[c]) * (255 - a) + 127) / 255) as u8);
        }
    }
    RgbImage::from_raw(w, h, out).expect("three bytes a pixel")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn transparent_pixels_become_the_background_and_opaque_ones_stay() {
        let mut rgba = RgbaImage::new(3, 1);
        rgba.put_pixel(0, 0, image::Rgba([10, 20, 30, 0]));
        rgba.put_pixel(1, 0, image::Rgba([10, 20, 30, 255]));
        rgba.put_pixel(2, 0, image::Rgba([0, 0, 0, 128]));
        let rgb = decode(&png(&DynamicImage::ImageRgba8(rgba))).unwrap();
        assert_eq!(rgb.get_pixel(0, 0).0, BACKGROUND);
        assert_eq!(rgb.get_pixel(1, 0).0, [10, 20, 30]);
        assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 127]);
    }

    #[test]
    fn a_decompression_bomb_is_refused_from_its_header() {
        // A PNG whose header says 20,000 x 20,000 (400 megapixels; one colour compresses to a
        // few hundred KB): refused before its data is read.
        let mut bytes = png(&DynamicImage::ImageLuma8(image::GrayImage::new(1, 1)));
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(probe(&bytes).unwrap(), (20_000, 20_000));
        let e = decode(&bytes).unwrap_err();
        assert!(matches!(e, DecodeError::TooLarge { width: 20_000, height: 20_000 }), "{e}");
        assert!(e.to_string().contains("400 megapixels"), "{e}");
    }

    #[test]
    fn a_16_bit_png_reads_as_its_8_bit_picture() {
        let rgb8 = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, ((x + y) * 20) as u8]));
        // Each 8-bit value v as the 16-bit value v * 257, as a 16-bit export of it holds.
        let rgb16 = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(7, 5, |x, y| {
            let p = rgb8.get_pixel(x, y).0;
            image::Rgb([u16::from(p[0]) * 257, u16::from(p[1]) * 257, u16::from(p[2]) * 257])
        });
        assert_eq!(decode(&png(&DynamicImage::ImageRgb16(rgb16))).unwrap(), rgb8);
    }

    #[test]
    fn bytes_in_no_format_are_named_as_such() {
        let e = decode(b"hello, not a picture").unwrap_err();
        assert!(e.to_string().contains("no picture format") && e.to_string().contains("HEIC"), "{e}");
    }

    #[test]
    fn every_exif_orientation_turns_the_picture_upright() {
        // A 3x2 picture with a distinct value in each pixel, stored as each orientation would
        // store it: decoding with the tag gives the upright picture back.
        let upright = image::GrayImage::from_fn(3, 2, |x, y| image::Luma([(10 * (y * 3 + x) + 5) as u8]));
        let upright = DynamicImage::ImageLuma8(upright);
        for value in 1..=8u8 {
            let o = Orientation::from_exif(value).unwrap();
            // What the camera stored: the inverse of the transform the tag asks for.
            let mut stored = upright.clone();
            let inverse = match o {
                Orientation::Rotate90 => Orientation::Rotate270,
                Orientation::Rotate270 => Orientation::Rotate90,
                other => other,
            };
            stored.apply_orientation(inverse);
            let tagged = png_with_exif_orientation(&stored, value);
            assert_eq!(orientation(&tagged), o, "orientation {value}");
            let got = decode(&tagged).unwrap();
            assert_eq!(got, upright.to_rgb8(), "orientation {value}");
        }
    }

    /// A PNG of `img` with an `eXIf` chunk holding Orientation = `value`.
    fn png_with_exif_orientation(img: &DynamicImage, value: u8) -> Vec<u8> {
        let plain = png(img);
        // Little-endian TIFF header, one IFD entry: tag 0x0112, SHORT, count 1, value.
        let mut exif = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0".to_vec();
        exif.extend_from_slice(&[value, 0, 0, 0, 0, 0, 0, 0]);
        let mut chunk = (exif.len() as u32).to_be_bytes().to_vec();
        let mut body = b"eXIf".to_vec();
        body.extend_from_slice(&exif);
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        // After the 8-byte signature and the 25-byte IHDR chunk, before IDAT.
        let mut out = plain[..33].to_vec();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&plain[33..]);
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut h = flate2::Crc::new();
        h.update(bytes);
        h.sum()
    }
}
