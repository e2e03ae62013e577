//! `export`: a run's whole classifier for other runtimes.

use std::path::{Path, PathBuf};

use super::predict::run_backbone_of;
use super::Session;
use crate::backbone::{DeviceChoice, Precision};
use crate::error::Result;
use crate::export::{read_run, read_unknown};

/// Writes a run's whole classifier (backbone + head) as TorchScript to `out`, in fp32 on the
/// CPU (see [`crate::export::export_torchscript`] for its input and output).
pub fn export(session: &Session, run_dir: &Path, format: crate::export::ExportFormat, out: &Path) -> Result<PathBuf> {
    let (card, head) = read_run(run_dir)?;
    let unknown = read_unknown(run_dir, &card)?;
    let session = Session { device: DeviceChoice::Cpu, ..session.clone() };
    let backbone = run_backbone_of(&session, &card, Precision::Fp32)?;
    match format {
        crate::export::ExportFormat::Torchscript => crate::export::export_torchscript(&backbone, &head, unknown.as_ref(), &card, out)?,
        crate::export::ExportFormat::Onnx => crate::export::onnx::export_onnx(&backbone, &head, unknown.as_ref(), &card, out)?,
    }
    Ok(out.to_path_buf())
}
