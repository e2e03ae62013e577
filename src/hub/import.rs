//! `lastlayer import`: converts a state dict with another layout (a PyTorch `.pth`/`.pt`,
//! zip or pre-1.6 legacy pickle, or a safetensors file) into the registry's safetensors layout
//! once, to be used with `--weights`.
//!
//! Known layouts: the registry's own (timm/torchvision names, optionally under a `module.`
//! prefix) for every architecture, and `efficientnet_pytorch`'s (`_conv_stem`, `_blocks.N.…`,
//! `_fc`) for EfficientNet-Lite0. Every tensor the network needs must be found with the right
//! shape; unknown tensors are an error (a wrong file is more likely than a harmless extra). The
//! original classifier (`fc.*`, `classifier.*`) is kept; BatchNorm's `num_batches_tracked` and
//! Inception's auxiliary head are dropped. Nothing is written unless all of that holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::backbone::Architecture;
use crate::backbone::efficientnet_lite::lite0_blocks;
use crate::backbone::Backbone;
use crate::error::{Error, Result};
use crate::fsutil::{sha256_file, write_safetensors};

/// What [`import_weights`] did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    /// The safetensors file written.
    pub out: PathBuf,
    /// Its sha256 (what `head.json` will record when it is used with `--weights`).
    pub sha256: String,
    /// The layout recognised: `registry` or `efficientnet_pytorch`.
    pub layout: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors of the input left out (`num_batches_tracked`, auxiliary heads).
    pub dropped: Vec<String>,
}

/// Reads every tensor of `path` as f32 (non-float tensors are returned separately by name).
pub fn read_state_dict(path: &Path) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let is_safetensors = std::fs::read(path)
        .map(|b| b.len() >= 9 && b[8] == b'{')
        .map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    let mut floats = BTreeMap::new();
    let mut others = Vec::new();
    if is_safetensors {
        for (name, t) in Tensor::read_safetensors(path).map_err(|e| Error::bad_input(path, format!("not a readable safetensors file ({e})")))? {
            if t.is_floating_point() {
                floats.insert(name, t.to_kind(Kind::Float));
            } else {
                others.push(name);
            }
        }
        return Ok((floats, others));
    }
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| {
        Error::bad_input(path, format!("neither safetensors nor a PyTorch state dict lastlayer can read ({e})"))
    })?;
    for (name, t) in reader.tensors() {
        use pytorch_reader::DType;
        let kind = match t.dtype() {
            DType::F32 => Kind::Float,
            DType::F64 => Kind::Double,
            DType::F16 => Kind::Half,
            DType::BF16 => Kind::BFloat16,
            _ => {
                others.push(name.clone());
                continue;
            }
        };
        let bytes = t.read().map_err(|e| Error::bad_input(path, format!("cannot read tensor '{name}' ({e})")))?;
        let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(&bytes, &shape, kind)?.to_kind(Kind::Float);
        floats.insert(name.clone(), tensor);
    }
    others.sort();
    Ok((floats, others))
}

/// `efficientnet_pytorch` (and the lite packages derived from it) → timm names, for Lite0;
/// `None` for a key that layout does not have.
pub fn efficientnet_pytorch_name(key: &str) -> Option<String> {
    let top = |k: &str| match k {
        "_conv_stem" => Some("conv_stem"),
        "_bn0" => Some("bn1"),
        "_conv_head" => Some("conv_head"),
        "_bn1" => Some("bn2"),
        "_fc" => Some("classifier"),
        _ => None,
    };
    if let Some(rest) = key.strip_prefix("_blocks.") {
        let (index, rest) = rest.split_once('.')?;
        let (module, param) = rest.split_once('.')?;
        let (stage, pos, ds) = *lite0_blocks().get(index.parse::<usize>().ok()?)?;
        let module = match (ds, module) {
            (true, "_depthwise_conv") => "conv_dw",
            (true, "_bn1") => "bn1",
            (true, "_project_conv") => "conv_pw",
            (true, "_bn2") => "bn2",
            (false, "_expand_conv") => "conv_pw",
            (false, "_bn0") => "bn1",
            (false, "_depthwise_conv") => "conv_dw",
            (false, "_bn1") => "bn2",
            (false, "_project_conv") => "conv_pwl",
            (false, "_bn2") => "bn3",
            _ => return None,
        };
        return Some(format!("blocks.{stage}.{pos}.{module}.{param}"));
    }
    let (module, param) = key.split_once('.')?;
    Some(format!("{}.{param}", top(module)?))
}

fn is_classifier(name: &str) -> bool {
    name.starts_with("fc.") || name.starts_with("classifier.")
}

fn list(names: &[String]) -> String {
    let shown = names.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        format!("{shown}, … ({} in all)", names.len())
    } else {
        shown
    }
}

/// Converts `input` into the registry layout of `architecture` and writes `out` atomically.
pub fn import_weights(input: &Path, architecture: Architecture, out: &Path) -> Result<ImportReport> {
    let (tensors, mut dropped) = read_state_dict(input)?;
    if tensors.is_empty() {
        return Err(Error::bad_input(input, "holds no floating-point tensors"));
    }
    let strip = tensors.keys().all(|k| k.starts_with("module."));
    let tensors: BTreeMap<String, Tensor> =
        tensors.into_iter().map(|(k, t)| (if strip { k["module.".len()..].to_string() } else { k }, t)).collect();
    let expected: BTreeMap<String, Vec<i64>> = Backbone::random(architecture, Device::Cpu).parameter_shapes().into_iter().collect();

    let registry_layout = expected.keys().all(|k| tensors.contains_key(k));
    type Rename = Box<dyn Fn(&str) -> Option<String>>;
    let (layout, map): (&'static str, Rename) = if registry_layout {
        ("registry", Box::new(|k: &str| Some(k.to_string())))
    } else if architecture == Architecture::EfficientnetLite0 && tensors.keys().any(|k| k.starts_with("_blocks.")) {
        ("efficientnet_pytorch", Box::new(efficientnet_pytorch_name))
    } else {
        ("registry", Box::new(|k: &str| Some(k.to_string())))
    };

    let mut found: BTreeMap<String, Tensor> = BTreeMap::new();
    let (mut unknown, mut wrong_shape) = (Vec::new(), Vec::new());
    for (key, t) in tensors {
        if key.starts_with("AuxLogits.") {
            dropped.push(key);
            continue;
        }
        match map(&key) {
            Some(name) if expected.get(&name).is_some_and(|s| *s == t.size()) || is_classifier(&name) => {
                found.insert(name, t);
            }
            Some(name) if expected.contains_key(&name) => {
                wrong_shape.push(format!("{key} {:?} (needs {:?} as {name})", t.size(), expected[&name]));
            }
            _ => unknown.push(key),
        }
    }
    let missing: Vec<String> = expected.keys().filter(|k| !found.contains_key(*k)).cloned().collect();
    let mut problems = Vec::new();
    if !wrong_shape.is_empty() {
        problems.push(format!("wrongly shaped: {}", list(&wrong_shape)));
    }
    if !missing.is_empty() {
        problems.push(format!("missing: {}", list(&missing)));
    }
    if !unknown.is_empty() {
        problems.push(format!("unknown: {}", list(&unknown)));
    }
    if !problems.is_empty() {
        return Err(Error::bad_input(
            input,
            format!(
                "does not match {architecture:?} in the {layout} layout ({}); nothing was written",
                problems.join("; ")
            ),
        ));
    }
    let named: Vec<(&str, &Tensor)> = found.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_safetensors(out, &named)?;
    dropped.sort();
    Ok(ImportReport { out: out.to_path_buf(), sha256: sha256_file(out)?, layout, tensors: named.len(), dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efficientnet_pytorch_names_map_to_timm() {
        assert_eq!(efficientnet_pytorch_name("_conv_stem.weight").as_deref(), Some("conv_stem.weight"));
        assert_eq!(efficientnet_pytorch_name("_blocks.0._depthwise_conv.weight").as_deref(), Some("blocks.0.0.conv_dw.weight"));
        assert_eq!(efficientnet_pytorch_name("_blocks.0._bn2.running_var").as_deref(), Some("blocks.0.0.bn2.running_var"));
        // Block 4 is the second block of stage 2; block 15 the only one of stage 6.
        assert_eq!(efficientnet_pytorch_name("_blocks.4._expand_conv.weight").as_deref(), Some("blocks.2.1.conv_pw.weight"));
        assert_eq!(efficientnet_pytorch_name("_blocks.15._bn2.bias").as_deref(), Some("blocks.6.0.bn3.bias"));
        assert_eq!(efficientnet_pytorch_name("_bn1.weight").as_deref(), Some("bn2.weight"));
        assert_eq!(efficientnet_pytorch_name("_fc.bias").as_deref(), Some("classifier.bias"));
        assert_eq!(efficientnet_pytorch_name("_blocks.16._bn0.weight"), None);
        assert_eq!(efficientnet_pytorch_name("_blocks.1._se_reduce.weight"), None);
        assert_eq!(efficientnet_pytorch_name("garbage"), None);
    }
}
