//! lastlayer: transfer learning on images from the shell.
//!
//! The pipeline, one module each: [`hub`] (registry and verified weight downloads) →
//! [`data`] (CIFAR-10 or a user's folders, samples, preprocessing) → [`backbone`] (frozen
//! ResNet / Inception-v3) → [`cache`] (features extracted once, on disk) → [`head`] (the new
//! last layer, trained on cached features) → [`export`] (the run folder: `head.safetensors`,
//! `head.json`). [`pipeline`] ties them together for the commands; [`serve`] puts a trained run
//! behind HTTP; [`review`] finds a run's confident mistakes, likely label errors and
//! train/test duplicates from the cached features.

pub mod backbone;
pub mod cache;
pub mod data;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod head;
pub mod hub;
pub mod net;
pub mod pipeline;
pub mod progress;
pub mod review;
pub mod serve;
pub mod status;

pub use error::{Error, Result};
