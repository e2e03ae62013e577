//! Preprocessing on the backbone's device (`src/data/on_device.rs`) against today's CPU path:
//! uint8 pictures packed, copied and resized with the same ops must give the same normalised
//! tensors, for CIFAR-10 (stretch) and for photos (shorter-side resize, centre crop), here with
//! the device being the CPU (CI has no GPU; `benches/gpu.sh` compares the kernels on CUDA).

mod common;

use lastlayer::data::on_device::Pixels;
use lastlayer::data::preprocess::Preprocessing;
use lastlayer::data::views::{Augment, Views};
use lastlayer::data::{load_picture, DataSpec, Dataset, OpenOptions};
use lastlayer::hub::Registry;
use lastlayer::progress::Progress;
use tch::{Device, Kind, Tensor};

/// Largest absolute difference; the shapes must agree.
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    assert_eq!(a.kind(), Kind::Float);
    assert_eq!(b.kind(), Kind::Float);
    (a - b).abs().max().double_value(&[])
}

fn open(spec: DataSpec) -> Dataset {
    let opts = OpenOptions { data_root: std::env::temp_dir(), offline: true, progress: Progress::hidden() };
    Dataset::open(&spec, &opts).unwrap()
}

#[test]
fn cifar_batches_match_the_cpu_path() {
    let data = open(DataSpec::Cifar10 { data_dir: Some(common::cifar_sample_dir()) });
    let split = data.split("train").unwrap();
    let registry = Registry::builtin();
    for model in ["resnet50", "inception_v3", "efficientnet_lite0"] {
        let pre = Preprocessing::stretch(&registry.get(model).unwrap().input());
        for rows in [0..48, 1000..1001] {
            let today = split.batch(rows.clone(), &pre).unwrap();
            let pixels = split.pixels(rows.clone()).unwrap();
            assert_eq!(pixels.len(), rows.len());
            assert_eq!(pixels.byte_len(), rows.len() * 3 * 32 * 32);
            let on_device = pre.batch_on(&pixels, Device::Cpu).unwrap();
            let d = max_diff(&today, &on_device);
            eprintln!("{model}, CIFAR rows {rows:?}: max difference {d:e}");
            assert!(d <= 1e-6, "{model}: {d}");
            assert_eq!(on_device.size(), vec![rows.len() as i64, 3, pre.input_size, pre.input_size]);
        }
    }
}

#[test]
fn photos_of_mixed_sizes_match_the_cpu_path() {
    let shared = common::shared_data();
    // Two real photographs that shrink with the antialiased 8-bit resize (451x300, 600x400),
    // and 32x32 JPEGs that grow, in an order that makes several runs of equal sizes.
    let small = shared.join("imagefolder-sample/train/cat");
    let mut paths = vec![shared.join("imagenet-check/chelsea.png")];
    paths.extend(["0200.jpg", "0201.jpg", "0202.jpg"].map(|f| small.join(f)));
    paths.push(shared.join("imagenet-check/coffee.png"));
    paths.push(shared.join("imagenet-check/coffee.png"));
    paths.push(small.join("0203.jpg"));
    let pictures: Vec<Tensor> = paths.iter().map(|p| load_picture(p).unwrap()).collect();
    let registry = Registry::builtin();
    // Bilinear (ResNets) and bicubic (Inception-v3 at 299, EfficientNet-Lite0), each with its
    // own mean and std.
    for model in ["resnet50", "inception_v3", "efficientnet_lite0"] {
        let pre = Preprocessing::center_crop(&registry.get(model).unwrap().input());
        let today = Tensor::cat(&pictures.iter().map(|p| pre.batch(p)).collect::<Vec<_>>(), 0);
        let pixels = Pixels::pictures(&pictures).unwrap();
        assert_eq!(pixels.len(), pictures.len());
        let on_device = pre.batch_on(&pixels, Device::Cpu).unwrap();
        let d = max_diff(&today, &on_device);
        eprintln!("{model}, photos: max difference {d:e}");
        assert!(d <= 1e-6, "{model}: {d}");
        // Not a constant: the pictures differ from each other after preprocessing.
        assert!(max_diff(&on_device.get(0), &on_device.get(4)) > 0.1);
    }
}

#[test]
fn a_folder_split_matches_the_cpu_path() {
    let root = common::shared_data().join("imagefolder-sample");
    let data = open(DataSpec::parse(root.to_str().unwrap(), None, 0.2, true).unwrap());
    let split = data.split("test").unwrap();
    let pre = Preprocessing::center_crop(&Registry::builtin().get("efficientnet_lite0").unwrap().input());
    let rows = 0..split.len().min(40);
    let today = split.batch(rows.clone(), &pre).unwrap();
    let on_device = pre.batch_on(&split.pixels(rows).unwrap(), Device::Cpu).unwrap();
    let d = max_diff(&today, &on_device);
    eprintln!("folder test split: max difference {d:e}");
    assert!(d <= 1e-6, "{d}");
}

/// `--augment` (mirror, crops, jitter) and `--tta flip` views made from uint8 pixels on the
/// device, against the same views made on the CPU: CIFAR-10 records (stretch) and photos of
/// mixed sizes (shorter-side resize, centre crop), with row ranges that start and end inside a
/// picture's views.
#[test]
fn views_match_the_cpu_path() {
    let registry = Registry::builtin();
    let augment = Views::Augment(Augment::parse("flip,crops=2,jitter=0.1").unwrap().unwrap());
    let cifar = open(DataSpec::Cifar10 { data_dir: Some(common::cifar_sample_dir()) }).split("train").unwrap().subset(&[0, 1, 2, 3, 4, 5]);
    let photos = open(DataSpec::parse(common::shared_data().join("imagefolder-sample").to_str().unwrap(), None, 0.2, true).unwrap())
        .split("test")
        .unwrap()
        .subset(&[0, 9, 18, 27]);
    for (what, split, pre) in [
        ("CIFAR", &cifar, Preprocessing::stretch(&registry.get("resnet50").unwrap().input())),
        ("photos", &photos, Preprocessing::center_crop(&registry.get("efficientnet_lite0").unwrap().input())),
    ] {
        for views in [augment, Views::TtaFlip] {
            let split = split.with_views(views);
            let v = views.count();
            for rows in [0..split.len(), 3..split.len() - 2] {
                let today = split.batch(rows.clone(), &pre).unwrap();
                let (pixels, ops) = split.view_pixels(rows.clone()).unwrap();
                assert_eq!((pixels.len(), ops.len()), (rows.end.div_ceil(v) - rows.start / v, rows.len()));
                let on_device = pre.views_on(&pixels, &ops, Device::Cpu).unwrap();
                let d = max_diff(&today, &on_device);
                eprintln!("{what}, {views:?}, rows {rows:?}: max difference {d:e}");
                assert!(d <= 1e-6, "{what} {views:?} {rows:?}: {d}");
            }
            // The views differ from one another: a mirror, crops.
            let all = split.batch(0..v, &pre).unwrap();
            assert!(max_diff(&all.get(0), &all.get(1)) > 0.1);
        }
    }
    let err = cifar.view_pixels(0..2).unwrap_err().to_string();
    assert!(err.contains("plain pictures"), "{err}");
}

#[test]
fn pictures_of_the_wrong_shape_are_an_error() {
    let hwc = Tensor::zeros([32, 32, 3], (Kind::Uint8, Device::Cpu));
    let err = Pixels::batch(&hwc).unwrap_err().to_string();
    assert!(err.contains("[N, 3, h, w]") && err.contains("[32, 32, 3]"), "{err}");
    let gray = Tensor::zeros([1, 1, 8, 8], (Kind::Uint8, Device::Cpu));
    assert!(Pixels::pictures(&[gray]).is_err());
    let pre = Preprocessing::stretch(&Registry::builtin().get("resnet18").unwrap().input());
    let err = pre.batch_on(&Pixels::pictures(&[]).unwrap(), Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no pictures"), "{err}");
}

/// The extraction loop with `LASTLAYER_PREPROCESS=device` on the CPU: the producer thread hands
/// over uint8 pixels, the consumer preprocesses them on the backbone's device (the path a GPU
/// takes, less the pinned copy). The features must equal the CPU path's.
#[test]
fn extraction_through_the_device_path_gives_the_cpu_features() {
    use lastlayer::backbone::{Architecture, Backbone};
    use lastlayer::pipeline::extract_split;
    let mut backbone = Backbone::random(Architecture::Resnet18, Device::Cpu);
    backbone.set_engine(lastlayer::backbone::Engine::Eager);
    let registry = Registry::builtin();
    let cifar = open(DataSpec::Cifar10 { data_dir: Some(common::cifar_sample_dir()) }).split("test").unwrap();
    let photos = open(DataSpec::parse(common::shared_data().join("imagefolder-sample").to_str().unwrap(), None, 0.2, true).unwrap())
        .split("test")
        .unwrap();
    let input = registry.get("resnet18").unwrap().input();
    let augment = Views::Augment(Augment::parse("flip,crops=1,jitter=0.1").unwrap().unwrap());
    for (split, pre) in [
        (cifar.subset(&[0, 1, 2, 3, 4]), Preprocessing::stretch(&input)),
        (photos.subset(&[0, 9, 18]), Preprocessing::center_crop(&input)),
        (cifar.subset(&[5, 6, 7]).with_views(augment), Preprocessing::stretch(&input)),
        (photos.subset(&[1, 10]).with_views(Views::TtaFlip), Preprocessing::center_crop(&input)),
    ] {
        std::env::set_var("LASTLAYER_PREPROCESS", "cpu");
        assert!(!lastlayer::data::on_device::preprocesses_on(Device::Cpu));
        let (cpu, labels) = extract_split(&backbone, &split, &pre, 2, &Progress::hidden()).unwrap();
        std::env::set_var("LASTLAYER_PREPROCESS", "device");
        assert!(lastlayer::data::on_device::preprocesses_on(Device::Cpu));
        let (dev, labels2) = extract_split(&backbone, &split, &pre, 2, &Progress::hidden()).unwrap();
        std::env::remove_var("LASTLAYER_PREPROCESS");
        assert_eq!(cpu.size(), vec![split.len() as i64, 512]);
        assert_eq!(labels, labels2);
        let d = max_diff(&cpu, &dev);
        eprintln!("{} rows through ResNet-18: max feature difference {d:e}", split.len());
        assert!(d <= 1e-6, "{d}");
        assert!(cpu.abs().max().double_value(&[]) > 0.0);
    }
}
