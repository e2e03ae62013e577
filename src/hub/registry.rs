//! The model registry: one readable TOML file, `pretrained/models.toml`, compiled into the
//! binary and replaceable at run time with `--registry FILE`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backbone::Architecture;
use crate::data::preprocess::{InputSpec, Interpolation};
use crate::error::{Error, IoContext, Result};

/// The registry shipped with lastlayer.
pub const BUILTIN_REGISTRY: &str = include_str!("../../pretrained/models.toml");

/// One registered backbone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// The name users type (`resnet50`).
    pub name: String,
    /// The network to build.
    pub architecture: Architecture,
    /// Hugging Face Hub repository (`timm/resnet50.tv_in1k`).
    pub hub_repo: String,
    /// A pinned commit of the repository; absent until someone who can reach the Hub fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The weights file in the repository.
    pub file: String,
    /// sha256 of `file` at `revision`; absent until known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Square input size in pixels.
    pub input_size: i64,
    /// Resize interpolation the weights were trained with.
    pub interpolation: Interpolation,
    /// Centre-crop fraction used at evaluation time (timm's `crop_pct`).
    pub crop_pct: f64,
    /// Per-channel mean (RGB, on pixels scaled to [0, 1]).
    pub mean: [f64; 3],
    /// Per-channel standard deviation (RGB).
    pub std: [f64; 3],
    /// Width of the pooled penultimate features.
    pub feature_width: i64,
    /// Cost of one picture at `input_size`, in GFLOPs (a multiply-add counts as two), as
    /// `benches/flops.py` counts it on timm's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    /// Extraction rate measured on the project's reference machine (2-core CPU, fp32 unless
    /// `--precision auto` picks bf16), pictures per second, by `benches/extract.sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_images_per_second: Option<f64>,
    /// Published CIFAR-10 accuracy of a linear classifier on these frozen features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cifar10_linear_probe: Option<Published>,
}

/// A published figure and where it was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Accuracy in percent.
    pub accuracy: f64,
    /// The paper and table.
    pub source: String,
}

impl ModelEntry {
    /// What the checkpoint expects as input (timm's `pretrained_cfg`).
    pub fn input(&self) -> InputSpec {
        InputSpec {
            input_size: self.input_size,
            interpolation: self.interpolation,
            crop_pct: self.crop_pct,
            mean: self.mean,
            std: self.std,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    model: Vec<ModelEntry>,
}

/// All registered backbones, in file order.
#[derive(Debug, Clone)]
pub struct Registry {
    models: Vec<ModelEntry>,
}

impl Registry {
    /// The registry compiled into lastlayer.
    pub fn builtin() -> Self {
        // The builtin file is checked by a unit test, so this cannot fail at run time.
        Self::parse(BUILTIN_REGISTRY, Path::new("pretrained/models.toml"))
            .unwrap_or_else(|e| panic!("the builtin registry is invalid: {e}"))
    }

    /// Reads a registry file (`--registry FILE`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        Self::parse(&text, path)
    }

    /// Parses registry text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let file: RegistryFile = toml::from_str(text)
            .map_err(|e| Error::bad_input(origin, format!("not a valid model registry: {e}")))?;
        let mut seen = std::collections::HashSet::new();
        for m in &file.model {
            if !seen.insert(m.name.as_str()) {
                return Err(Error::bad_input(origin, format!("model '{}' is listed twice", m.name)));
            }
            if let Some(rev) = &m.revision {
                if !is_hex(rev, 40) {
                    return Err(Error::bad_input(
                        origin,
                        format!("model '{}': revision must be a 40-hex-digit commit, got '{rev}'", m.name),
                    ));
                }
            }
            if let Some(sha) = &m.sha256 {
                if !is_hex(sha, 64) {
                    return Err(Error::bad_input(origin, format!("model '{}': sha256 must be 64 hex digits", m.name)));
                }
            }
            let multiple = m.architecture.input_multiple();
            if m.input_size % multiple != 0 {
                return Err(Error::bad_input(
                    origin,
                    format!("model '{}': input_size {} is not a multiple of the patch size {multiple}", m.name, m.input_size),
                ));
            }
            if m.input_size < 32 || !(0.0 < m.crop_pct && m.crop_pct <= 1.0) || m.std.iter().any(|s| *s <= 0.0) {
                return Err(Error::bad_input(
                    origin,
                    format!("model '{}': input_size must be >= 32, crop_pct in (0, 1], std > 0", m.name),
                ));
            }
        }
        Ok(Registry { models: file.model })
    }

    /// All entries, in file order.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// The entry called `name`, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<&ModelEntry> {
        self.models.iter().find(|m| m.name == name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

/// True when `s` is exactly `len` lowercase-or-uppercase hex digits.
pub(crate) fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_lists_every_required_backbone() {
        let reg = Registry::builtin();
        let expect = [
            ("resnet18", 512, 224),
            ("resnet34", 512, 224),
            ("resnet50", 2048, 224),
            ("resnet101", 2048, 224),
            ("resnet152", 2048, 224),
            ("inception_v3", 2048, 299),
            ("efficientnet_lite0", 1280, 224),
        ];
        for (name, width, size) in expect {
            let m = reg.get(name).unwrap();
            assert_eq!((m.feature_width, m.input_size), (width, size), "{name}");
            assert!(m.hub_repo.starts_with("timm/"), "{name}: {}", m.hub_repo);
            assert_eq!(m.file, "model.safetensors");
        }
    }

    #[test]
    fn unknown_model_error_lists_known_names() {
        let err = Registry::builtin().get("resnet9000").unwrap_err().to_string();
        assert!(err.contains("resnet9000") && err.contains("resnet50") && err.contains("inception_v3"), "{err}");
    }

    #[test]
    fn invalid_revision_is_rejected_with_the_model_named() {
        let text = BUILTIN_REGISTRY.replacen("file = \"model.safetensors\"", "revision = \"main\"\nfile = \"model.safetensors\"", 1);
        let err = Registry::parse(&text, Path::new("r.toml")).unwrap_err().to_string();
        assert!(err.contains("resnet18") && err.contains("40-hex"), "{err}");
    }
}
