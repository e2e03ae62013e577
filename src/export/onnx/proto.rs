//! The ONNX IR types, generated at build time by prost-build from `proto/onnx.proto` (the
//! schema from the `onnx` 1.23.2 release). Encoded with [`prost::Message`].
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
