//! Photos as people have them: the EXIF orientation applied (all eight values, in JPEG, PNG and
//! WebP), the formats phones and cameras write (HEIC, AVIF, TIFF, BMP, GIF, greyscale, palette,
//! CMYK, alpha), each read as Pillow shows it; and a feature store made before orientation was
//! applied is not served stale.
//!
//! The pictures are made by tests/python/make_photos.py (Pillow and pillow-heif, pinned) from
//! `imagenet-check/chelsea.png`, and compared through the real EfficientNet-Lite0 weights: the
//! features of each file against those of Pillow's own reading of it, and the ImageNet class.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use lastlayer::backbone::{Backbone, Precision};
use lastlayer::data::content::{ContentKey, RowKey};
use lastlayer::data::preprocess::Preprocessing;
use lastlayer::data::{decode_picture, load_picture, read_picture};
use lastlayer::hub::Registry;
use tch::{Device, Kind, Tensor};

/// The real Lite0 backbone with its ImageNet classifier.
struct Lite0 {
    backbone: Backbone,
    classifier: (Tensor, Tensor),
    pre: Preprocessing,
}

impl Lite0 {
    fn new(sb: &Sandbox) -> Lite0 {
        let weights = crate::real_weights::import(sb);
        let entry = Registry::builtin().get("efficientnet_lite0").unwrap().clone();
        let backbone = Backbone::load(entry.architecture, Path::new(&weights), Device::Cpu, Precision::Fp32).unwrap();
        let tensors = Tensor::read_safetensors(&weights).unwrap();
        let get = |n: &str| tensors.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
        Lite0 { backbone, classifier: (get("classifier.weight"), get("classifier.bias")), pre: Preprocessing::center_crop(&entry.input()) }
    }

    /// Features and ImageNet top-1 class of a picture `[1, 3, h, w]`.
    fn run(&self, picture: &Tensor) -> (Tensor, i64) {
        let f = self.backbone.features(&self.pre.batch(picture)).unwrap();
        let logits = f.matmul(&self.classifier.0.tr()) + &self.classifier.1;
        (f.get(0), logits.argmax(-1, false).int64_value(&[0]))
    }
}

/// `|a - b| / |b|`.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).norm().double_value(&[]) / b.norm().double_value(&[])
}

/// ImageNet's cats: what a correct classifier puts first for chelsea.png.
const CATS: [i64; 3] = [285, 281, 282];

/// Largest relative feature difference from Pillow's reading of the same file allowed per
/// format, as measured here with the real Lite0 weights: lossless formats decode to Pillow's
/// pixels exactly (0); JPEG decoders differ in their last bits (zune-jpeg against
/// libjpeg-turbo: at most 3 levels, 0.011 on average; features 2.6e-3 to 4.6e-3 apart); HEIC
/// (Debian's libheif 1.15 against pillow-heif's 1.23: at most 1 level; 6.3e-3 to 7.7e-3) and
/// AVIF (libheif's chroma upsampling against libavif's: at most 18 levels at edges, 0.45 on
/// average; 2.9e-2).
fn tolerance(file: &str) -> f64 {
    match file.rsplit('.').next().unwrap_or("") {
        "png" | "webp" | "tiff" | "bmp" | "gif" => 1e-6,
        "jpg" => 1e-2,
        "heic" => 2e-2,
        _ => 5e-2, // AVIF
    }
}

/// What a viewer shows for pixels stored with EXIF orientation `v`, on `[1, 3, h, w]`.
fn shown(stored: &Tensor, v: u8) -> Tensor {
    match v {
        1 => stored.shallow_clone(),
        2 => stored.flip([3]),
        3 => stored.flip([2, 3]),
        4 => stored.flip([2]),
        5 => stored.transpose(2, 3),
        6 => stored.transpose(2, 3).flip([3]),
        7 => stored.transpose(2, 3).flip([2, 3]),
        8 => stored.transpose(2, 3).flip([2]),
        _ => unreachable!(),
    }
}

#[test]
fn every_orientation_and_format_reads_as_pillow_shows_it() {
    let sb = Sandbox::new();
    let dir = sb.path().join("photos");
    let made = python_script("make_photos.py", &[shared_data().join("imagenet-check/chelsea.png").to_str().unwrap(), dir.to_str().unwrap()]);
    assert!(made.ok, "make_photos.py failed:\n{}", made.stderr);
    let pairs: BTreeMap<String, String> = serde_json::from_slice(&made.stdout).unwrap();
    let lite0 = Lite0::new(&sb);
    let run = |name: &str| lite0.run(&load_picture(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")));

    let (mut report, mut failures) = (Vec::new(), Vec::new());
    for (file, reference) in &pairs {
        let (f, class) = run(file);
        let (r, _) = run(reference);
        let diff = relative(&f, &r);
        report.push(format!("{file}: {diff:.2e} from {reference}, class {class}"));
        if diff > tolerance(file) {
            failures.push(format!("{file}: features {diff:.2e} from Pillow's reading ({reference}), over {:.0e}", tolerance(file)));
        }
        if !CATS.contains(&class) {
            failures.push(format!("{file}: ImageNet class {class} first, expected one of {CATS:?}"));
        }
        // The same picture without its tag is another picture wherever the tag turns it.
        if let Some(v) = file.strip_prefix('o').and_then(|s| s.split('.').next()).and_then(|v| v.parse::<u8>().ok()) {
            let raw = dir.join(file.replacen('o', "raw", 1));
            // Exactly the stored pixels (the same bytes but the tag), turned as the tag says.
            let expected = shown(&load_picture(&raw).unwrap(), v);
            let (upright, _) = lite0.run(&expected);
            let own = relative(&f, &upright);
            report.push(format!("  the stored pixels turned as tag {v} says: {own:.2e}"));
            if !load_picture(&dir.join(file)).unwrap().equal(&expected) || own > 1e-3 {
                failures.push(format!("{file}: not the stored pixels turned as orientation {v} says ({own:.2e})"));
            }
            let (untagged, _) = lite0.run(&load_picture(&raw).unwrap());
            let apart = relative(&untagged, &r);
            report.push(format!("  {}: {apart:.2e} from {reference}", raw.file_name().unwrap().to_string_lossy()));
            if v == 1 && apart > tolerance(file) {
                failures.push(format!("orientation 1 changes nothing, but the untagged file is {apart:.2e} away"));
            } else if v != 1 && apart <= 0.05 {
                failures.push(format!("{file}: the untagged pixels' features are only {apart:.2e} from the upright picture's"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(pairs.keys().filter(|f| f.starts_with('o')).count(), 17, "8 orientations in JPEG and PNG, and one in WebP");

    // Every way into lastlayer decodes alike: files (extraction, views, review, predict) and
    // uploaded bytes (serve).
    for file in ["o6.jpg", "o5.png", "f.heic", "f_alpha.png"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let (read, key) = read_picture(&dir.join(file)).unwrap();
        assert!(read.equal(&load_picture(&dir.join(file)).unwrap()) && read.equal(&decode_picture(&bytes).unwrap()), "{file}");
        // A turned picture is keyed apart from its bytes (see the next test); others by them.
        assert_eq!(key == ContentKey::of(&bytes), !file.starts_with("o6") && !file.starts_with("o5"), "{file}");
    }

    // A folder of phone photos through the command line; and without libheif, the HEIC photo
    // is named with its format and what to install (exit 3 with --strict, nothing cached).
    let folder = sb.path().join("phone");
    for (class, files) in [("cat", ["f.heic", "o6.jpg"]), ("tabby", ["f.avif", "o8.png"])] {
        std::fs::create_dir_all(folder.join(class)).unwrap();
        for f in files {
            std::fs::copy(dir.join(f), folder.join(class).join(f)).unwrap();
        }
    }
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let args = ["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", folder.to_str().unwrap(), "--test-fraction", "0",
        "--split", "train", "--precision", "fp32", "--input-size", "64", "--strict"];
    let mut without = Sandbox::new();
    without.set("LASTLAYER_NO_LIBHEIF", "1");
    let out = without.run(&args);
    assert_fails(&out, 3, &["f.heic", "HEIC", "libheif", "apt-get install libheif1"]);
    assert!(!without.path().join("cache/store").exists(), "nothing may be cached");
    let out = sb.run_json(&args);
    assert_eq!(out["backbone_rows"], 4, "{out}");
}

/// A JPEG of the shared folder sample with an EXIF APP1 segment saying Orientation = `value`
/// inserted after its SOI marker (the pixels untouched, as a camera's tag would leave them).
fn with_orientation_tag(jpeg: &[u8], value: u8) -> Vec<u8> {
    let mut tiff = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    tiff.extend_from_slice(&[0, value, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// lastlayer before it applied orientation keyed a tagged photo's row by its bytes alone and
/// computed it lying on its side. Such a row, and the file-hash index that remembered that key,
/// must not be served: the photo is computed again, upright; every other row is reused.
#[test]
fn rows_of_a_tagged_photo_cached_sideways_are_not_served() {
    let mut sb = Sandbox::new();
    sb.set("LASTLAYER_ENGINE", "eager");
    let w = random_weights("resnet18", sb.path()).0.display().to_string();
    let data = sb.path().join("pictures");
    let sample = shared_data().join("imagefolder-sample/train");
    let mut classes: Vec<_> = std::fs::read_dir(&sample).unwrap().flatten().map(|e| e.path()).collect();
    classes.sort();
    for class in &classes[..2] {
        let mut files: Vec<_> = std::fs::read_dir(class).unwrap().flatten().map(|e| e.path()).collect();
        files.sort();
        let to = data.join(class.file_name().unwrap());
        std::fs::create_dir_all(&to).unwrap();
        for f in &files[..6] {
            std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
    let extract = |sb: &Sandbox| {
        sb.run_json(&["--json", "extract", "--model", "resnet18", "--weights", &w, "--data", data.to_str().unwrap(), "--split", "train",
            "--test-fraction", "0", "--precision", "fp32", "--input-size", "64"])
    };
    let first = extract(&sb);
    assert_eq!(first["backbone_rows"], 12, "{first}");

    // What the older lastlayer left: a photo with an orientation tag, its row stored under the
    // key of its bytes, and the hash index (version 1) remembering that key for its path.
    let class = data.join(classes[0].file_name().unwrap());
    let original = std::fs::read(std::fs::read_dir(&class).unwrap().flatten().next().unwrap().path()).unwrap();
    let tagged = with_orientation_tag(&original, 6);
    let path = class.join("portrait.jpg");
    std::fs::write(&path, &tagged).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(old).unwrap();
    let stale = RowKey::plain(ContentKey::of(&tagged));
    let stores: Vec<_> = std::fs::read_dir(sb.path().join("cache/store/resnet18")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(stores.len(), 1);
    let store = lastlayer::cache::store::FeatureStore::open_dir(&stores[0]).unwrap();
    let width = store.read().unwrap().width().unwrap();
    store.writer(width).unwrap().append(&[stale], &vec![0.5f32; width as usize]).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    let index = serde_json::json!({"version": 1, "entries": {path.display().to_string():
        [{"size": meta.len(), "mtime_ns": meta.mtime() * 1_000_000_000 + meta.mtime_nsec(), "ino": meta.ino()}, ContentKey::of(&tagged).hex()]}});
    std::fs::write(sb.path().join("cache/store/file-hashes.json"), index.to_string()).unwrap();

    let second = extract(&sb);
    assert_eq!(second["backbone_rows"], 1, "the tagged photo must be computed again, and only it: {second}");
    assert_eq!(second["splits"][0]["store_rows"], 12, "{second}");
    // Its row is the upright picture's, not the stale one.
    let t = Tensor::read_safetensors(second["splits"][0]["features"].as_str().unwrap()).unwrap();
    let x = t.iter().find(|(k, _)| k == "features").unwrap().1.shallow_clone();
    let stale_rows = x.eq(0.5).all_dim(1, false).sum(Kind::Int64).int64_value(&[]);
    assert_eq!(stale_rows, 0, "the stale row was served");
}

