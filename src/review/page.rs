//! `review.html`: the review as one self-contained page (no scripts, styles, fonts or pictures
//! from elsewhere): the confusion matrix, whose cells open their pictures, and the mistakes,
//! the label issues and the duplicate pairs side by side, each picture a small thumbnail
//! embedded as a JPEG data URI.
//!
//! The page shows the first [`PageLimits::per_list`] entries of each list and at most
//! [`PageLimits::per_cell`] pictures of a cell (the most confident first); `--json` has all.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Serialize;
use serde_json::json;
use tch::{Kind, Tensor};

use super::{PairKind, Review};
use crate::error::{Error, Result};

/// The page's template; `__REVIEW_DATA__` becomes the data.
const TEMPLATE: &str = include_str!("page.html");
/// Longest side of a thumbnail, in pixels (smaller pictures keep their size).
pub const THUMBNAIL_PIXELS: u32 = 64;

/// A picture of one of the splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Which {
    /// The training split.
    Train,
    /// The test split.
    Test,
}

impl Which {
    fn tag(self, index: usize) -> String {
        match self {
            Which::Train => format!("train:{index}"),
            Which::Test => format!("test:{index}"),
        }
    }
}

/// How much of the review the page shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Entries of each list (mistakes, label issues, duplicate pairs).
    pub per_list: usize,
    /// Pictures of a confusion-matrix cell.
    pub per_cell: usize,
}

impl PageLimits {
    /// 200 entries a list, and about 2,400 cell pictures in all (4 to 24 a cell).
    pub fn for_classes(classes: usize) -> PageLimits {
        PageLimits { per_list: 200, per_cell: (2400 / (classes * classes).max(1)).clamp(4, 24) }
    }
}

/// The pictures the page shows, each once.
pub fn pictures_needed(review: &Review, limits: PageLimits) -> Vec<(Which, usize)> {
    let mut set = std::collections::BTreeSet::new();
    for m in review.mistakes.iter().take(limits.per_list) {
        set.insert((Which::Test, m.row));
    }
    for i in review.label_issues.iter().take(limits.per_list) {
        set.insert((if i.split == "train" { Which::Train } else { Which::Test }, i.row));
    }
    for d in review.duplicates.iter().take(limits.per_list) {
        let (a, b) = sides(d.kind);
        set.insert((a, d.rows.0));
        set.insert((b, d.rows.1));
    }
    for row in &review.cells {
        for cell in row {
            set.extend(cell.iter().take(limits.per_cell).map(|&i| (Which::Test, i)));
        }
    }
    set.into_iter().collect()
}

/// The splits of a pair's `test` and `train` pictures.
fn sides(kind: PairKind) -> (Which, Which) {
    match kind {
        PairKind::TestTrain => (Which::Test, Which::Train),
        PairKind::WithinTrain => (Which::Train, Which::Train),
        PairKind::WithinTest => (Which::Test, Which::Test),
    }
}

/// A `[1, 3, h, w]` (or `[3, h, w]`) uint8 picture as a JPEG data URI, its longest side at
/// most [`THUMBNAIL_PIXELS`].
pub fn thumbnail(picture: &Tensor) -> Result<String> {
    let p = if picture.dim() == 4 { picture.get(0) } else { picture.shallow_clone() };
    let size = p.size();
    if size.len() != 3 || size[0] != 3 {
        return Err(Error::usage("picture", format!("a picture is [3, h, w], not {size:?}")));
    }
    let (h, w) = (size[1] as u32, size[2] as u32);
    let hwc: Vec<u8> = Vec::<u8>::try_from(p.to_kind(Kind::Uint8).permute([1, 2, 0]).contiguous().view([-1]))?;
    let img = image::RgbImage::from_raw(w, h, hwc).ok_or_else(|| Error::usage("picture", "pixel count does not match its size"))?;
    let longest = w.max(h);
    let img = if longest > THUMBNAIL_PIXELS {
        let (tw, th) = ((w * THUMBNAIL_PIXELS / longest).max(1), (h * THUMBNAIL_PIXELS / longest).max(1));
        image::imageops::thumbnail(&img, tw, th)
    } else {
        img
    };
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&img)
        .map_err(|e| Error::usage("picture", format!("cannot encode a thumbnail ({e})")))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(&jpeg)))
}

/// The page: `title` (the run folder), the review, and the thumbnails of
/// [`pictures_needed`] (a picture without one shows its name only).
pub fn render(title: &str, review: &Review, thumbs: &BTreeMap<(Which, usize), String>, limits: PageLimits) -> String {
    let mut names: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut picture = |which: Which, index: usize, name: &str| {
        let tag = which.tag(index);
        names.entry(tag.clone()).or_insert_with(|| json!({ "name": name, "split": which, "thumb": thumbs.get(&(which, index)) }));
        tag
    };
    let mistakes: Vec<_> = review
        .mistakes
        .iter()
        .take(limits.per_list)
        .map(|m| json!({ "ref": picture(Which::Test, m.row, &m.picture), "given": m.given, "predicted": m.predicted, "probability": m.probability }))
        .collect();
    let issues: Vec<_> = review
        .label_issues
        .iter()
        .take(limits.per_list)
        .map(|i| {
            let which = if i.split == "train" { Which::Train } else { Which::Test };
            json!({ "ref": picture(which, i.row, &i.picture), "split": i.split, "given": i.given, "suggested": i.suggested, "score": i.score })
        })
        .collect();
    let duplicates: Vec<_> = review
        .duplicates
        .iter()
        .take(limits.per_list)
        .map(|d| {
            let (a, b) = sides(d.kind);
            json!({ "test": picture(a, d.rows.0, &d.test), "train": picture(b, d.rows.1, &d.train), "kind": d.kind, "similarity": d.similarity, "exact": d.exact })
        })
        .collect();
    let cells: Vec<Vec<Vec<String>>> = review
        .cells
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| cell.iter().take(limits.per_cell).map(|&i| picture(Which::Test, i, review.test_names.get(i).map_or("", String::as_str))).collect())
                .collect()
        })
        .collect();
    let data = json!({
        "title": title,
        "summary": review.summary,
        "mistakes": mistakes,
        "label_issues": issues,
        "duplicates": duplicates,
        "cells": cells,
        "pictures": names,
        "limits": { "per_list": limits.per_list, "per_cell": limits.per_cell },
    });
    // `</` cannot end the script element when written `<\/` (the same string in JSON).
    let data = serde_json::to_string(&data).unwrap_or_else(|_| "{}".into()).replace("</", "<\\/");
    TEMPLATE.replace("__REVIEW_DATA__", &data)
}
