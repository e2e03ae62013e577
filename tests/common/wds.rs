//! WebDataset tar shards made from the shared image folder, for tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::shared_data;

/// Writes a tar of `members` (name, bytes).
pub fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, name, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().flush().unwrap();
}

/// `path`'s picture as lossless webp bytes.
pub fn webp(path: &Path) -> Vec<u8> {
    let img = image::open(path).unwrap().to_rgb8();
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out).encode(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8).unwrap();
    out
}

/// WebDataset shards from the shared image folder in `dir/wds`: `classes` classes; `train` =
/// (pictures of each class a tar, tars) from train/, `test` the same from val/. The first
/// sample of each set is webp; train-001.tar also holds a broken picture and one without a
/// label.
pub fn make_webdataset(dir: &Path, classes: usize, train: (usize, usize), test: (usize, usize)) -> PathBuf {
    let src = shared_data().join("imagefolder-sample");
    let mut names: Vec<String> = std::fs::read_dir(src.join("train")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names.truncate(classes);
    let out = dir.join("wds");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("classes.txt"), names.join("\n") + "\n").unwrap();
    for (split, folder, (per_tar, n_tars)) in [("train", "train", train), ("test", "val", test)] {
        let mut files: Vec<Vec<PathBuf>> = names
            .iter()
            .map(|c| {
                let mut v: Vec<PathBuf> = std::fs::read_dir(src.join(folder).join(c)).unwrap().flatten().map(|e| e.path()).collect();
                v.sort();
                v
            })
            .collect();
        for t in 0..n_tars {
            let mut members = Vec::new();
            for k in 0..per_tar {
                for (label, f) in files.iter_mut().enumerate() {
                    let path = f.remove(0);
                    let key = format!("s{t:02}{k:02}{label:02}");
                    if t == 0 && k == 0 {
                        // img2dataset can write webp: the first samples of each set are.
                        members.push((format!("{key}.webp"), webp(&path)));
                    } else {
                        members.push((format!("{key}.jpg"), std::fs::read(&path).unwrap()));
                    }
                    members.push((format!("{key}.cls"), format!("{label}\n").into_bytes()));
                }
            }
            if split == "train" && t == 1 {
                members.push(("broken.jpg".into(), b"not a jpeg".to_vec()));
                members.push(("broken.cls".into(), b"0".to_vec()));
                members.push(("nolabel.jpg".into(), members[0].1.clone()));
            }
            write_tar(&out.join(format!("{split}-{t:03}.tar")), &members);
        }
    }
    out
}

