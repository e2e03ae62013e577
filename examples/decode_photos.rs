//! Decoding photos as lastlayer reads them (`lastlayer::data::decode_picture`: bytes to an
//! upright `[1, 3, h, w]` tensor): pictures a second for each file given, with and without
//! applying its EXIF orientation, and the process's peak
//! memory after decoding and preprocessing each once (the whole path of `predict`: decode,
//! tensor, resize and crop to the model's input). `benches/decode.sh` makes the photos.
//!
//! ```sh
//! cargo run --release --example decode_photos -- ROUNDS FILE...
//! ```

use std::time::Instant;

use lastlayer::data::preprocess::Preprocessing;
use lastlayer::hub::Registry;

/// Peak resident memory of this process so far (`VmHWM`), in MiB.
fn peak_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    kib / 1024.0
}

/// The picture as stored (no orientation applied) as a `[1, 3, h, w]` uint8 tensor: the path
/// before lastlayer applied the tag.
fn decode_as_stored(bytes: &[u8]) -> anyhow::Result<tch::Tensor> {
    let (img, _) = lastlayer::data::decode::decode_stored(bytes)?;
    let (w, h) = img.dimensions();
    let hwc = tch::Tensor::from_slice(img.as_raw()).view([h as i64, w as i64, 3]);
    Ok(hwc.permute([2, 0, 1]).unsqueeze(0).contiguous())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let entry = Registry::builtin().get("resnet50")?.clone();
    let pre = Preprocessing::center_crop(&entry.input());
    for file in &args[1..] {
        let bytes = std::fs::read(file)?;
        let orientation = lastlayer::data::decode::orientation(&bytes);
        // Memory first, on a fresh process's first picture: decode and preprocess once.
        let before = peak_mib();
        let start = Instant::now();
        let picture = lastlayer::data::decode_picture(&bytes)?;
        let x = pre.batch(&picture);
        let once = start.elapsed().as_secs_f64();
        let (h, w) = (picture.size()[2], picture.size()[3]);
        println!(
            "{file}: {w}x{h} ({:.1} MP, {:.1} MB), orientation {orientation:?}; decode+preprocess once {once:.2}s to {:?}; peak RSS {:.0} MiB (before {:.0})",
            (w * h) as f64 / 1e6,
            bytes.len() as f64 / 1e6,
            x.size(),
            peak_mib(),
            before
        );
        drop((picture, x));
        for (what, f) in [
            ("applied (lastlayer)", &(|b: &[u8]| lastlayer::data::decode_picture(b).map(|_| ()).map_err(anyhow::Error::from)) as &dyn Fn(&[u8]) -> anyhow::Result<()>),
            ("as stored (before)", &|b: &[u8]| decode_as_stored(b).map(|_| ())),
        ] {
            let start = Instant::now();
            for _ in 0..rounds {
                f(&bytes)?;
            }
            let s = start.elapsed().as_secs_f64();
            println!("  decode to a tensor, orientation {what}: {:.2} pictures/s ({rounds} in {s:.2}s)", rounds as f64 / s);
        }
    }
    Ok(())
}
