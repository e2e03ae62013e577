//! Property tests (bounded fuzzing) of everything that parses bytes a user or a disk hands us:
//! CIFAR-10 records, cache manifests, `head.json`, safetensors and PyTorch state dicts, the
//! imported key map, the registry. None may panic; each must accept exactly what it should.
//!
//! CI runs the default number of cases; for a longer run:
//! `PROPTEST_CASES=20000 cargo test --release --test suite fuzz_readers::`.

use std::path::Path;

use lastlayer::cache::FeatureCache;
use lastlayer::data::cifar10::{check_records, RECORD_BYTES};
use lastlayer::backbone::Architecture;
use lastlayer::hub::{efficientnet_pytorch_name, import_weights, Registry};
use proptest::prelude::*;

fn valid_head_json() -> String {
    // A real head.json shape with every field present, made by serialising default-ish values
    // is more code than it is worth here; mutations of a hand-written one reach the parser.
    r#"{"format":"lastlayer-head","format_version":1,"classes":["a","b"],"feature_width":4}"#.to_string()
}

/// Lite0's parameter names, made once (a random Lite0 per case was 30 s of the run).
static LITE0_NAMES: std::sync::LazyLock<std::collections::HashSet<String>> = std::sync::LazyLock::new(|| {
    lastlayer::backbone::Backbone::random(Architecture::EfficientnetLite0, tch::Device::Cpu).parameter_shapes().into_iter().map(|(n, _)| n).collect()
});

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn cifar_records_accepted_exactly_when_whole_and_labelled(records in 0usize..4, extra in 0usize..3073, labels in proptest::collection::vec(0u8..14, 4)) {
        let mut bytes = vec![0u8; records * RECORD_BYTES + if extra % 7 == 0 { 0 } else { extra }];
        for r in 0..records {
            bytes[r * RECORD_BYTES] = labels[r];
        }
        let ok = check_records(&bytes, Path::new("f.bin")).is_ok();
        let should = !bytes.is_empty() && bytes.len().is_multiple_of(RECORD_BYTES) && labels.iter().take(records).all(|&l| l <= 9);
        prop_assert_eq!(ok, should);
    }

    #[test]
    fn cifar_reader_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..10_000)) {
        let _ = check_records(&bytes, Path::new("f.bin"));
    }

    #[test]
    fn manifests_and_head_cards_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2_000), cut in 0usize..200, flip in any::<u8>()) {
        let dir = tempfile::tempdir().unwrap();
        // Random bytes, and a truncated or altered real-looking document.
        let mut doc = valid_head_json().into_bytes();
        doc.truncate(cut.min(doc.len()));
        if let Some(b) = doc.get_mut(cut % 20) { *b ^= flip; }
        for content in [&bytes, &doc] {
            std::fs::write(dir.path().join("manifest.json"), content).unwrap();
            std::fs::write(dir.path().join("head.json"), content).unwrap();
            prop_assert!(FeatureCache::verify_dir(dir.path()).is_err());
            prop_assert!(lastlayer::export::read_run(dir.path()).is_err());
            let _ = lastlayer::status::read_status(dir.path());
        }
    }

    #[test]
    fn weight_files_of_random_bytes_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4_000), header in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut content = bytes.clone();
        if header && content.len() > 16 {
            // Looks like safetensors: a plausible header length and a '{'.
            let n = (content.len() - 8) as u64;
            content[..8].copy_from_slice(&n.to_le_bytes());
            content[8] = b'{';
        }
        let input = dir.path().join("w.pth");
        std::fs::write(&input, &content).unwrap();
        let out = dir.path().join("out.safetensors");
        prop_assert!(import_weights(&input, Architecture::Resnet18, &out).is_err());
        prop_assert!(!out.exists());
        let st = dir.path().join("w.safetensors");
        std::fs::write(&st, &content).unwrap();
        prop_assert!(lastlayer::backbone::Backbone::load(Architecture::Resnet18, &st, tch::Device::Cpu, lastlayer::backbone::Precision::Fp32).is_err());
    }

    #[test]
    fn imported_key_map_is_total_and_lands_on_real_names(block in 0usize..20, module in "_(expand_conv|depthwise_conv|project_conv|bn0|bn1|bn2|se_reduce)", param in "(weight|bias|running_mean|running_var)", junk in "\\PC{0,30}") {
        let _ = efficientnet_pytorch_name(&junk);
        let key = format!("_blocks.{block}.{module}.{param}");
        let expected = &*LITE0_NAMES;
        if let Some(name) = efficientnet_pytorch_name(&key) {
            // Convolutions have no bias in Lite0; every other mapped name must exist.
            prop_assert!(expected.contains(&name) || (name.contains("conv") && param != "weight"), "{} -> {}", key, name);
        }
    }

    #[test]
    fn registry_parser_never_panics(text in "\\PC{0,400}") {
        let _ = Registry::parse(&text, Path::new("r.toml"));
    }
}
