//! Where pretrained weights come from: the model registry (`pretrained/models.toml`), the
//! commits and checksums pinned on first use, and verified downloads from the Hugging Face Hub;
//! data set repositories' parquet files (`--data hf:OWNER/NAME`).

mod api;
mod datasets;
mod fetch;
mod hf_cache;
mod import;
mod pins;
mod registry;
mod remote;

pub use datasets::{resolve_dataset, split_of, DatasetFiles, DatasetOptions, DatasetRequest, CONVERTED_REVISION};
pub use fetch::{fetch_weights, resolve_weights, FetchOptions, ResolvedWeights, WeightsOrigin};
pub use import::{efficientnet_pytorch_name, import_weights, read_state_dict, ImportReport};
pub use pins::{Pin, Pins};
pub use registry::{ModelEntry, Published, Registry};
