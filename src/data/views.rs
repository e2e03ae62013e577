//! Views of a picture: the augmented views of a training picture (`--augment`), extracted
//! once and cached like any other features, and the mirror image for test-time flips
//! (`--tta flip`).
//!
//! A split with views has one row per (picture, view), picture-major: row `p * V + v` is view
//! `v` of picture `p`. Each view is a deterministic function of the picture (its bytes, and a
//! key that names it within the data set), the view index and the seed, so a cached view set is
//! reproducible and a killed extraction resumes to identical bytes.
//!
//! The views of `--augment flip,crops=K,jitter=J,scale=S,seed=N`:
//! - view 0: the picture as without augmentation (the same input tensor);
//! - view 1 (with `flip`): its mirror image;
//! - then `K` random resized crops: a region of `S` to 100% of the picture's area with an
//!   aspect ratio in [3/4, 4/3] (torchvision's `RandomResizedCrop` sampling), brought to the
//!   input size by the model's own preprocessing, mirrored with probability 1/2 when `flip` is
//!   on, and with `jitter > 0` their brightness, contrast and saturation each scaled by a factor
//!   in `[1 - J, 1 + J]` (torchvision's `ColorJitter` formulas).
//!
//! Mirroring acts on the resized input (after the resize and crop of the preprocessing), which
//! is what an exported model receives, so that `--tta flip` in an export computes exactly what
//! `eval` did.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::content::{ContentKey, RowKey};
use super::preprocess::Preprocessing;
use crate::error::{Error, Result};

/// The smallest share of a picture's area a crop keeps, unless `scale=` says otherwise.
pub const DEFAULT_CROP_SCALE: f64 = 0.35;
/// Most crops a picture may have.
pub const MAX_CROPS: u32 = 64;

/// `--augment`: the extra views of each training picture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augment {
    /// A mirror-image view, and crops mirrored at random.
    pub flip: bool,
    /// Random resized crops per picture.
    pub crops: u32,
    /// Colour jitter strength of the crops (0: none).
    pub jitter: f64,
    /// Smallest share of the area a crop keeps.
    pub scale: f64,
    /// Seed of the crops and jitter.
    pub seed: u64,
}

impl Augment {
    /// Parses `flip`, `crops=4`, `jitter=0.1`, `scale=0.35`, `seed=1`, comma separated; `none`
    /// (or an empty spec) means no augmentation.
    pub fn parse(spec: &str) -> Result<Option<Augment>> {
        let spec = spec.trim();
        if spec.is_empty() || spec.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let bad = |msg: String| Error::usage("--augment", format!("{msg}; write e.g. `flip`, `flip,crops=4` or `flip,crops=4,jitter=0.1`"));
        let mut a = Augment { flip: false, crops: 0, jitter: 0.0, scale: DEFAULT_CROP_SCALE, seed: 0 };
        for part in spec.split(',').map(str::trim) {
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (part, None),
            };
            let number = |v: Option<&str>| -> Result<f64> {
                let v = v.ok_or_else(|| bad(format!("'{name}' needs a value ({name}=...)")))?;
                v.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| bad(format!("'{v}' is not a number for {name}")))
            };
            match name {
                "flip" if value.is_none() => a.flip = true,
                "crops" => {
                    let n = number(value)?;
                    if n.fract() != 0.0 || !(1.0..=MAX_CROPS as f64).contains(&n) {
                        return Err(bad(format!("crops={n} must be a whole number from 1 to {MAX_CROPS}")));
                    }
                    a.crops = n as u32;
                }
                "jitter" => {
                    a.jitter = number(value)?;
                    if !(0.0..1.0).contains(&a.jitter) {
                        return Err(bad(format!("jitter={} must be in [0, 1)", a.jitter)));
                    }
                }
                "scale" => {
                    a.scale = number(value)?;
                    if !(a.scale > 0.0 && a.scale <= 1.0) {
                        return Err(bad(format!("scale={} must be in (0, 1]", a.scale)));
                    }
                }
                "seed" => {
                    let n = number(value)?;
                    if n.fract() != 0.0 || n < 0.0 {
                        return Err(bad(format!("seed={n} must be a whole number >= 0")));
                    }
                    a.seed = n as u64;
                }
                _ => return Err(bad(format!("'{part}' is not a view option (flip, crops=N, jitter=X, scale=X, seed=N)"))),
            }
        }
        if a.jitter > 0.0 && a.crops == 0 {
            return Err(bad("jitter applies to the crops; add crops=N".into()));
        }
        if !a.flip && a.crops == 0 {
            return Err(bad("no views asked for".into()));
        }
        Ok(Some(a))
    }

    /// Views per picture, the picture itself included.
    pub fn views(&self) -> usize {
        1 + usize::from(self.flip) + self.crops as usize
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.flip {
            parts.push("flip".to_string());
        }
        if self.crops > 0 {
            parts.push(format!("crops={}", self.crops));
            if self.jitter > 0.0 {
                parts.push(format!("jitter={}", self.jitter));
            }
            if self.scale != DEFAULT_CROP_SCALE {
                parts.push(format!("scale={}", self.scale));
            }
        }
        if self.seed != 0 {
            parts.push(format!("seed={}", self.seed));
        }
        f.write_str(&parts.join(","))
    }
}

/// `--tta`: test-time augmentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// The picture alone.
    #[default]
    None,
    /// The mean of the picture's and its mirror image's features.
    Flip,
}

impl Tta {
    /// True for [`Tta::None`] (serde's `skip_serializing_if`).
    pub fn is_none(&self) -> bool {
        *self == Tta::None
    }
}

/// The views a split's rows are made of.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Views {
    /// `--augment`: every view is a row of the cached features.
    Augment(Augment),
    /// `--tta flip`: the picture and its mirror, whose features are averaged into one row
    /// before they are cached.
    TtaFlip,
}

/// What one view does to a picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewOp {
    /// `(top, left, height, width)` of the region kept, in the picture's pixels.
    pub crop: Option<(i64, i64, i64, i64)>,
    /// Mirror the resized input.
    pub mirror: bool,
    /// Brightness, contrast and saturation factors.
    pub jitter: Option<[f64; 3]>,
}

impl Views {
    /// Rows extracted per picture.
    pub fn count(&self) -> usize {
        match self {
            Views::Augment(a) => a.views(),
            Views::TtaFlip => 2,
        }
    }

    /// True when the views are averaged into one row per picture before caching.
    pub fn averaged(&self) -> bool {
        matches!(self, Views::TtaFlip)
    }

    /// The tag that names view `view` in a row key ([`RowKey::view`]): `None` for the picture
    /// itself, `mirror` for its mirror image, and for a crop everything its randomness and
    /// look depend on (its number among the crops and the spec), so that the same view is the
    /// same row whichever `--augment` or `--tta` asked for it.
    pub fn tag(&self, view: usize) -> Option<String> {
        match (self, view) {
            (_, 0) => None,
            (Views::TtaFlip, _) => Some("mirror".into()),
            (Views::Augment(a), 1) if a.flip => Some("mirror".into()),
            (Views::Augment(a), v) => {
                let k = v - 1 - usize::from(a.flip);
                Some(format!("crop:{k}:scale={}:jitter={}:flip={}:seed={}", a.scale, a.jitter, a.flip, a.seed))
            }
        }
    }

    /// The store's key of view `view` of the picture with content key `content`.
    pub fn row_key(&self, content: ContentKey, view: usize) -> RowKey {
        match self.tag(view) {
            None => RowKey::plain(content),
            Some(tag) => RowKey::view(content, &tag),
        }
    }

    /// What view `view` does to a `height` x `width` picture whose content key is `key`. A
    /// crop's randomness is seeded by the picture's content, the crop's number and the seed, so
    /// it does not depend on the picture's name or on which other pictures are extracted.
    pub fn op(&self, key: ContentKey, view: usize, height: i64, width: i64) -> ViewOp {
        let plain = ViewOp { crop: None, mirror: false, jitter: None };
        let a = match self {
            Views::TtaFlip => return ViewOp { mirror: view == 1, ..plain },
            Views::Augment(a) => a,
        };
        match view {
            0 => plain,
            1 if a.flip => ViewOp { mirror: true, ..plain },
            _ => {
                let crop_number = view - 1 - usize::from(a.flip);
                let mut rng = view_rng(a.seed, key, crop_number);
                let crop = random_resized_crop(&mut rng, height, width, a.scale);
                let mirror = a.flip && rng.gen_bool(0.5);
                let jitter = (a.jitter > 0.0).then(|| {
                    let j = a.jitter;
                    [rng.gen_range(1.0 - j..=1.0 + j), rng.gen_range(1.0 - j..=1.0 + j), rng.gen_range(1.0 - j..=1.0 + j)]
                });
                ViewOp { crop: Some(crop), mirror, jitter }
            }
        }
    }

    /// The normalised input `[1, 3, S, S]` of view `view` of `picture` (`[1, 3, h, w]` uint8),
    /// whose content key is `key`. View 0 of `--augment` is exactly `pre.batch(picture)`.
    pub fn input(&self, picture: &Tensor, key: ContentKey, view: usize, pre: &Preprocessing) -> Tensor {
        let (h, w) = (picture.size()[2], picture.size()[3]);
        self.op(key, view, h, w).apply(picture, pre)
    }
}

impl ViewOp {
    /// True when the view is the picture as preprocessed, perhaps mirrored: no crop, no jitter.
    pub fn is_plain(&self) -> bool {
        self.crop.is_none() && self.jitter.is_none()
    }

    /// The normalised input `[1, 3, S, S]` this view makes of `picture` (`[1, 3, h, w]` uint8),
    /// on the picture's device: the crop, the model's resize, the mirror, the jitter, then the
    /// normalisation.
    pub fn apply(&self, picture: &Tensor, pre: &Preprocessing) -> Tensor {
        let cropped = match self.crop {
            Some((top, left, ch, cw)) => picture.narrow(2, top, ch).narrow(3, left, cw),
            None => picture.shallow_clone(),
        };
        let mut x = pre.resized(&cropped);
        if self.mirror {
            x = mirror(&x);
        }
        if let Some(factors) = self.jitter {
            x = color_jitter(&x, factors);
        }
        pre.normalize(&x)
    }
}

/// `x` mirrored left to right (`[N, C, H, W]`): what `--tta flip` adds, here and in exports.
pub fn mirror(x: &Tensor) -> Tensor {
    x.flip([3])
}

/// The features of a picture under `--tta flip` from its own and its mirror's: `(a + b) / 2`,
/// computed the same way wherever it is (extraction, predict, serve, the TorchScript export).
pub fn average_pair(a: &Tensor, b: &Tensor) -> Tensor {
    (a + b) * 0.5
}

/// `[N * V, D]` view rows (picture-major) averaged over the views `which` into `[N, D]`: the
/// running sum in the order given, times `1 / len`. For two views that is [`average_pair`].
pub fn average_views(rows: &Tensor, views: usize, which: &[usize]) -> Tensor {
    let d = rows.size()[1];
    let per_picture = rows.view([-1, views as i64, d]);
    match which {
        [one] => per_picture.select(1, *one as i64).contiguous(),
        [a, b] => average_pair(&per_picture.select(1, *a as i64), &per_picture.select(1, *b as i64)).contiguous(),
        _ => {
            let mut sum = per_picture.select(1, which[0] as i64).copy();
            for &v in &which[1..] {
                sum += per_picture.select(1, v as i64);
            }
            sum * (1.0 / which.len() as f64)
        }
    }
}

/// The generator of crop `crop` of the picture with content key `key`: seeded from a hash of
/// the three, so a crop does not depend on the picture's name, on which other pictures or views
/// are extracted, or in what order.
fn view_rng(seed: u64, key: ContentKey, crop: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"lastlayer-crop\0");
    h.update(&seed.to_le_bytes());
    h.update(&(crop as u64).to_le_bytes());
    h.update(&key.0);
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 tries of an area share in
/// `[scale, 1]` and a log-uniform aspect ratio in [3/4, 4/3]; then the centre crop of the
/// clamped ratio. Returns `(top, left, height, width)`.
fn random_resized_crop(rng: &mut ChaCha8Rng, height: i64, width: i64, scale: f64) -> (i64, i64, i64, i64) {
    let area = (height * width) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale..=1.0);
        let ratio = rng.gen_range(lo..=hi).exp();
        let w = (target * ratio).sqrt().round() as i64;
        let h = (target / ratio).sqrt().round() as i64;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.gen_range(0..=height - h);
            let left = rng.gen_range(0..=width - w);
            return (top, left, h, w);
        }
    }
    let ratio = width as f64 / height as f64;
    let (h, w) = if ratio < 3.0 / 4.0 {
        (((width as f64) / (3.0 / 4.0)).round() as i64, width)
    } else if ratio > 4.0 / 3.0 {
        (height, ((height as f64) * (4.0 / 3.0)).round() as i64)
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// torchvision's `ColorJitter` on 0-255 RGB values: brightness, contrast, then saturation,
/// each a blend with black, the mean grey level and the pixel's own grey level, clamped.
fn color_jitter(x: &Tensor, [brightness, contrast, saturation]: [f64; 3]) -> Tensor {
    let grey = |x: &Tensor| {
        let c = |i: i64| x.narrow(1, i, 1);
        c(0) * 0.299 + c(1) * 0.587 + c(2) * 0.114
    };
    let x = (x * brightness).clamp(0.0, 255.0);
    let mean = grey(&x).mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    let x = ((&x - &mean) * contrast + &mean).clamp(0.0, 255.0);
    let g = grey(&x);
    ((&x - &g) * saturation + &g).clamp(0.0, 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        let a = Augment::parse("flip,crops=4,jitter=0.1").unwrap().unwrap();
        assert_eq!((a.flip, a.crops, a.jitter, a.scale, a.seed, a.views()), (true, 4, 0.1, DEFAULT_CROP_SCALE, 0, 6));
        assert_eq!(a.to_string(), "flip,crops=4,jitter=0.1");
        assert_eq!(Augment::parse("none").unwrap(), None);
        let b = Augment::parse("crops=2, scale=0.5, seed=3").unwrap().unwrap();
        assert_eq!((b.flip, b.views(), b.to_string().as_str()), (false, 3, "crops=2,scale=0.5,seed=3"));
    }

    #[test]
    fn bad_specs_name_the_flag_and_the_fault() {
        for (spec, fault) in [
            ("flop", "'flop' is not a view option"),
            ("crops=0", "from 1 to 64"),
            ("crops=2.5", "whole number"),
            ("jitter=0.2", "add crops=N"),
            ("flip,jitter=x", "not a number"),
            ("crops", "needs a value"),
            ("flip,scale=0", "(0, 1]"),
        ] {
            let e = Augment::parse(spec).unwrap_err().to_string();
            assert!(e.contains("--augment") && e.contains(fault), "{spec}: {e}");
        }
    }

    #[test]
    fn a_view_depends_only_on_seed_picture_and_index() {
        let (cat1, cat2, dog) = (ContentKey::of(b"cat 1"), ContentKey::of(b"cat 2"), ContentKey::of(b"dog 7"));
        let v = Views::Augment(Augment::parse("flip,crops=3,jitter=0.2").unwrap().unwrap());
        assert_eq!(v.op(cat1, 2, 100, 80), v.op(cat1, 2, 100, 80));
        assert_ne!(v.op(cat1, 2, 100, 80), v.op(cat1, 3, 100, 80));
        assert_ne!(v.op(cat1, 2, 100, 80), v.op(cat2, 2, 100, 80));
        let w = Views::Augment(Augment { seed: 1, ..Augment::parse("flip,crops=3,jitter=0.2").unwrap().unwrap() });
        assert_ne!(v.op(cat1, 2, 100, 80), w.op(cat1, 2, 100, 80));
        for view in 2..5 {
            let op = v.op(dog, view, 100, 80);
            let (top, left, h, w) = op.crop.unwrap();
            assert!(top >= 0 && left >= 0 && top + h <= 100 && left + w <= 80, "{op:?}");
            assert!((h * w) as f64 >= 0.35 * 8000.0 * 0.99, "{op:?}");
            assert!(op.jitter.unwrap().iter().all(|f| (0.8..=1.2).contains(f)));
        }
        let x = ContentKey::of(b"x");
        assert_eq!(v.op(x, 0, 10, 10), ViewOp { crop: None, mirror: false, jitter: None });
        assert!(v.op(x, 1, 10, 10).mirror);
    }

    #[test]
    fn the_same_view_is_the_same_row_whichever_spec_asked_for_it() {
        let k = ContentKey::of(b"picture");
        let flip = Views::Augment(Augment::parse("flip").unwrap().unwrap());
        let flip_crops = Views::Augment(Augment::parse("flip,crops=2").unwrap().unwrap());
        let crops = Views::Augment(Augment::parse("crops=2").unwrap().unwrap());
        // The picture itself and its mirror image are shared by every spec and by --tta flip.
        assert_eq!(flip.row_key(k, 0), RowKey::plain(k));
        assert_eq!(flip.row_key(k, 1), Views::TtaFlip.row_key(k, 1));
        assert_eq!(flip_crops.row_key(k, 1), flip.row_key(k, 1));
        assert_eq!(crops.row_key(k, 0), RowKey::plain(k));
        // Crops mirrored at random (flip) are not the unmirrored crops; other crops differ.
        assert_ne!(flip_crops.row_key(k, 2), crops.row_key(k, 1));
        assert_ne!(flip_crops.row_key(k, 2), flip_crops.row_key(k, 3));
        // A crop's number, not its view index, seeds it: crop 0 of `crops=2` and of `crops=3`.
        let crops3 = Views::Augment(Augment::parse("crops=3").unwrap().unwrap());
        assert_eq!(crops.op(k, 1, 64, 48), crops3.op(k, 1, 64, 48));
        assert_eq!(crops.row_key(k, 1), crops3.row_key(k, 1), "the same crop, so the same row");
        let scaled = Views::Augment(Augment::parse("crops=2,scale=0.5").unwrap().unwrap());
        assert_ne!(crops.row_key(k, 1), scaled.row_key(k, 1), "the spec is in the tag");
    }

    #[test]
    fn averaging_two_views_is_the_pair_mean() {
        let rows = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 6.0, 10.0, 20.0, 30.0, 60.0]).view([4, 2]);
        let mean = average_views(&rows, 2, &[0, 1]);
        assert_eq!(Vec::<f32>::try_from(mean.flatten(0, -1)).unwrap(), vec![2.0, 4.0, 20.0, 40.0]);
        let first = average_views(&rows, 2, &[0]);
        assert_eq!(Vec::<f32>::try_from(first.flatten(0, -1)).unwrap(), vec![1.0, 2.0, 10.0, 20.0]);
    }
}
