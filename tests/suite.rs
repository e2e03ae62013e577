//! The integration tests, one binary: one build and link instead of sixteen, and one pool of
//! test threads across all of them, so that no binary's slowest test leaves a core idle while
//! the next binary waits (`cargo test --test suite parity::` runs one file's tests).
//! `tests/device_preprocess.rs` stays a binary of its own: it sets environment variables.

#[path = "common/mod.rs"]
mod common;

#[path = "augment.rs"]
mod augment;
#[path = "downloads.rs"]
mod downloads;
#[path = "end_to_end.rs"]
mod end_to_end;
#[path = "export.rs"]
mod export;
#[path = "fuzz_readers.rs"]
mod fuzz_readers;
#[path = "huggingface.rs"]
mod huggingface;
#[path = "inputs_and_errors.rs"]
mod inputs_and_errors;
#[path = "parity.rs"]
mod parity;
#[path = "photos.rs"]
mod photos;
#[path = "real_weights.rs"]
mod real_weights;
#[path = "reliability.rs"]
mod reliability;
#[path = "review.rs"]
mod review;
#[path = "run_outputs.rs"]
mod run_outputs;
#[path = "scale_out.rs"]
mod scale_out;
#[path = "serve.rs"]
mod serve;
#[path = "slurm.rs"]
mod slurm;
#[path = "store.rs"]
mod store;
