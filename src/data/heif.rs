//! HEIC/HEIF (what an iPhone saves by default) and AVIF pictures, decoded by the system's
//! libheif (`libheif.so.1`, with its HEVC and AV1 decoders), loaded with `libloading` when the
//! first such picture comes. lastlayer then builds and runs without libheif, and only these
//! pictures need it: without it, they fail with [`DecodeError::MissingLibrary`], which names
//! the package to install.
//!
//! Why not the `libheif-rs` crate: it links libheif when lastlayer is built and needs libheif
//! 1.17 or later, and Debian 12 ships 1.15. The dozen C functions used here are libheif's
//! stable API (unchanged since 1.4).
//!
//! libheif applies the picture's own rotation and mirror boxes (`irot`, `imir`) while
//! decoding, which is how HEIF stores orientation (its EXIF tag, if any, is informative).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use image::{RgbImage, RgbaImage};

use super::decode::{check_size, composite, DecodeError};

/// The picture's format when `bytes` is an ISO base media file that libheif reads: `AVIF`,
/// `HEIC` or `HEIF` (the `ftyp` box's major and compatible brands), else `None`.
pub fn format_of(bytes: &[u8]) -> Option<&'static str> {
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return None;
    }
    let size = (u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize).clamp(16, bytes.len().min(4096));
    // The major brand, then (after the minor version) the compatible ones.
    let brands: Vec<&[u8]> = std::iter::once(&bytes[8..12]).chain(bytes[16..size].chunks_exact(4)).collect();
    let has = |names: &[&[u8]]| brands.iter().any(|b| names.contains(b));
    if has(&[b"avif", b"avis"]) {
        Some("AVIF")
    } else if has(&[b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"]) {
        Some("HEIC")
    } else if has(&[b"mif1", b"msf1"]) {
        Some("HEIF")
    } else {
        None
    }
}

/// The primary picture of `bytes` (a `format` file), upright, as 8-bit RGB, alpha composited
/// as [`super::decode::decode`] does.
pub fn decode(bytes: &[u8], format: &'static str) -> Result<RgbImage, DecodeError> {
    let lib = library(format)?;
    let handle = Primary::open(lib, bytes, format)?;
    let (width, height) = handle.dimensions();
    check_size(width, height)?;
    let alpha = handle.has_alpha();
    // SAFETY: the handle is valid while `handle` lives; the image is released by `Decoded`.
    let image = unsafe {
        let mut out = null_mut();
        let chroma = if alpha { CHROMA_INTERLEAVED_RGBA } else { CHROMA_INTERLEAVED_RGB };
        check((lib.decode_image)(handle.handle, &mut out, COLORSPACE_RGB, chroma, null()), format)?;
        Decoded { lib, image: out }
    };
    let channels = if alpha { 4 } else { 3 };
    // SAFETY: the interleaved plane of a decoded RGB(A) image is `stride` bytes a row for its
    // height, valid until the image is released (after the copy below).
    let (w, h, pixels) = unsafe {
        let (w, h) = ((lib.image_get_width)(image.image, CHANNEL_INTERLEAVED), (lib.image_get_height)(image.image, CHANNEL_INTERLEAVED));
        let mut stride: c_int = 0;
        let plane = (lib.image_get_plane_readonly)(image.image, CHANNEL_INTERLEAVED, &mut stride);
        if plane.is_null() || w <= 0 || h <= 0 || (stride as i64) < w as i64 * channels as i64 {
            return Err(DecodeError::Heif { format, message: "libheif gave no RGB picture".into() });
        }
        let row = w as usize * channels;
        let mut pixels = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            pixels.extend_from_slice(std::slice::from_raw_parts(plane.add(y * stride as usize), row));
        }
        (w as u32, h as u32, pixels)
    };
    drop(image);
    let bad = || DecodeError::Heif { format, message: "libheif's picture does not match its size".into() };
    if alpha {
        Ok(composite(&RgbaImage::from_raw(w, h, pixels).ok_or_else(bad)?))
    } else {
        RgbImage::from_raw(w, h, pixels).ok_or_else(bad)
    }
}

/// Width and height of the primary picture (after its rotation), from the file's boxes alone.
pub fn dimensions(bytes: &[u8], format: &'static str) -> Result<(u32, u32), DecodeError> {
    let lib = library(format)?;
    Ok(Primary::open(lib, bytes, format)?.dimensions())
}

// libheif's enum values (heif.h): heif_colorspace_RGB, heif_chroma_interleaved_RGB(A),
// heif_channel_interleaved.
const COLORSPACE_RGB: c_int = 1;
const CHROMA_INTERLEAVED_RGB: c_int = 10;
const CHROMA_INTERLEAVED_RGBA: c_int = 11;
const CHANNEL_INTERLEAVED: c_int = 10;

/// `struct heif_error`.
#[repr(C)]
struct HeifError {
    code: c_int,
    subcode: c_int,
    message: *const c_char,
}

/// The functions used, resolved once from the loaded library.
struct Library {
    _lib: libloading::Library,
    context_alloc: unsafe extern "C" fn() -> *mut c_void,
    context_free: unsafe extern "C" fn(*mut c_void),
    read_from_memory_without_copy: unsafe extern "C" fn(*mut c_void, *const c_void, usize, *const c_void) -> HeifError,
    primary_image_handle: unsafe extern "C" fn(*mut c_void, *mut *mut c_void) -> HeifError,
    handle_release: unsafe extern "C" fn(*mut c_void),
    handle_width: unsafe extern "C" fn(*mut c_void) -> c_int,
    handle_height: unsafe extern "C" fn(*mut c_void) -> c_int,
    handle_has_alpha: unsafe extern "C" fn(*mut c_void) -> c_int,
    decode_image: unsafe extern "C" fn(*mut c_void, *mut *mut c_void, c_int, c_int, *const c_void) -> HeifError,
    image_get_width: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    image_get_height: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    image_get_plane_readonly: unsafe extern "C" fn(*mut c_void, c_int, *mut c_int) -> *const u8,
    image_release: unsafe extern "C" fn(*mut c_void),
}

// SAFETY: libheif's functions may be called from any thread on distinct contexts; the struct
// holds only the library and function pointers.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

/// The names tried, in order.
const NAMES: [&str; 4] = ["libheif.so.1", "libheif.so", "libheif.1.dylib", "libheif.dylib"];

/// libheif, loaded on first use (or why it could not be).
fn library(format: &'static str) -> Result<&'static Library, DecodeError> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(|why| DecodeError::MissingLibrary { format, library: "libheif", package: "libheif1", why: why.clone() })
}

fn load() -> Result<Library, String> {
    if std::env::var_os("LASTLAYER_NO_LIBHEIF").is_some() {
        return Err("LASTLAYER_NO_LIBHEIF is set".into());
    }
    let mut why = Vec::new();
    for name in NAMES {
        // SAFETY: loading libheif runs its initialisers, which only set up its plugins.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return resolve(lib).map_err(|e| format!("{name}: {e}")),
            Err(e) => why.push(e.to_string()),
        }
    }
    Err(why.first().cloned().unwrap_or_else(|| "not found".into()))
}

fn resolve(lib: libloading::Library) -> Result<Library, libloading::Error> {
    // SAFETY: each symbol is declared with its C signature from heif.h.
    unsafe {
        if let Ok(init) = lib.get::<unsafe extern "C" fn(*mut c_void) -> HeifError>(b"heif_init\0") {
            // Loads the decoder plugins (libheif 1.14 and later); older versions need nothing.
            init(null_mut());
        }
        Ok(Library {
            context_alloc: *lib.get(b"heif_context_alloc\0")?,
            context_free: *lib.get(b"heif_context_free\0")?,
            read_from_memory_without_copy: *lib.get(b"heif_context_read_from_memory_without_copy\0")?,
            primary_image_handle: *lib.get(b"heif_context_get_primary_image_handle\0")?,
            handle_release: *lib.get(b"heif_image_handle_release\0")?,
            handle_width: *lib.get(b"heif_image_handle_get_width\0")?,
            handle_height: *lib.get(b"heif_image_handle_get_height\0")?,
            handle_has_alpha: *lib.get(b"heif_image_handle_has_alpha_channel\0")?,
            decode_image: *lib.get(b"heif_decode_image\0")?,
            image_get_width: *lib.get(b"heif_image_get_width\0")?,
            image_get_height: *lib.get(b"heif_image_get_height\0")?,
            image_get_plane_readonly: *lib.get(b"heif_image_get_plane_readonly\0")?,
            image_release: *lib.get(b"heif_image_release\0")?,
            _lib: lib,
        })
    }
}

/// `Err` with libheif's message unless `e` says success.
fn check(e: HeifError, format: &'static str) -> Result<(), DecodeError> {
    if e.code == 0 {
        return Ok(());
    }
    // SAFETY: libheif's messages are static C strings ("always defined", heif.h).
    let message = if e.message.is_null() { format!("libheif error {}", e.code) } else { unsafe { CStr::from_ptr(e.message) }.to_string_lossy().into_owned() };
    Err(DecodeError::Heif { format, message: format!("cannot decode ({message})") })
}

/// A file's context and its primary picture's handle, released when dropped.
struct Primary<'a> {
    lib: &'static Library,
    context: *mut c_void,
    handle: *mut c_void,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Primary<'a> {
    fn open(lib: &'static Library, bytes: &'a [u8], format: &'static str) -> Result<Primary<'a>, DecodeError> {
        // SAFETY: the context reads `bytes` without copying them; they outlive it (`'a`).
        unsafe {
            let mut p = Primary { lib, context: (lib.context_alloc)(), handle: null_mut(), _bytes: std::marker::PhantomData };
            if p.context.is_null() {
                return Err(DecodeError::Heif { format, message: "libheif could not allocate a context".into() });
            }
            check((lib.read_from_memory_without_copy)(p.context, bytes.as_ptr().cast(), bytes.len(), null()), format)?;
            check((lib.primary_image_handle)(p.context, &mut p.handle), format)?;
            Ok(p)
        }
    }

    fn dimensions(&self) -> (u32, u32) {
        // SAFETY: a valid handle.
        unsafe { ((self.lib.handle_width)(self.handle).max(0) as u32, (self.lib.handle_height)(self.handle).max(0) as u32) }
    }

    fn has_alpha(&self) -> bool {
        // SAFETY: a valid handle.
        unsafe { (self.lib.handle_has_alpha)(self.handle) != 0 }
    }
}

impl Drop for Primary<'_> {
    fn drop(&mut self) {
        // SAFETY: each was made by libheif and is released once.
        unsafe {
            if !self.handle.is_null() {
                (self.lib.handle_release)(self.handle);
            }
            if !self.context.is_null() {
                (self.lib.context_free)(self.context);
            }
        }
    }
}

/// A decoded picture, released when dropped.
struct Decoded {
    lib: &'static Library,
    image: *mut c_void,
}

impl Drop for Decoded {
    fn drop(&mut self) {
        if !self.image.is_null() {
            // SAFETY: made by heif_decode_image, released once.
            unsafe { (self.lib.image_release)(self.image) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brands_name_the_format() {
        let ftyp = |major: &[u8; 4], compatible: &[&[u8; 4]]| {
            let mut b = Vec::new();
            b.extend_from_slice(&((16 + 4 * compatible.len()) as u32).to_be_bytes());
            b.extend_from_slice(b"ftyp");
            b.extend_from_slice(major);
            b.extend_from_slice(&[0, 0, 0, 0]);
            for c in compatible {
                b.extend_from_slice(*c);
            }
            b.extend_from_slice(&[0; 16]);
            b
        };
        assert_eq!(format_of(&ftyp(b"heic", &[b"mif1", b"heic"])), Some("HEIC"));
        assert_eq!(format_of(&ftyp(b"mif1", &[b"mif1", b"heic"])), Some("HEIC"));
        assert_eq!(format_of(&ftyp(b"avif", &[b"mif1", b"miaf"])), Some("AVIF"));
        assert_eq!(format_of(&ftyp(b"mif1", &[b"avif"])), Some("AVIF"));
        assert_eq!(format_of(&ftyp(b"mif1", &[b"miaf"])), Some("HEIF"));
        assert_eq!(format_of(&ftyp(b"isom", &[b"mp41"])), None, "an MP4 video is no picture");
        assert_eq!(format_of(b"\xff\xd8\xff\xe0 a JPEG"), None);
    }
}
