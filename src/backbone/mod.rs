//! Frozen, headless backbones: build the network for a registry [`Architecture`], load its
//! weights from a safetensors file (checking every tensor's name and shape), and turn
//! normalised picture batches into pooled penultimate features. The network is in inference
//! mode, runs without gradients, and its weights never change.

pub mod architecture;
pub mod convnext;
pub mod efficientnet_lite;
pub mod frozen;
pub mod inception_v3;
pub mod layers;
pub mod ops;
pub mod resnet;
pub mod traced;
pub mod vit;

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use crate::data::views::{average_pair, mirror, Tta};
use crate::error::{Error, Result};
pub use architecture::{Architecture, Family};
use efficientnet_lite::EfficientNetLite;
use inception_v3::InceptionV3;
use frozen::FrozenModule;
use convnext::ConvNext;
use resnet::ResNet;
use vit::VisionTransformer;

pub use ops::{Eager, Ops};

/// Batches the frozen engine runs on zeros before the first real one: TorchScript's profiling
/// executor runs its first two calls of a shape unfused while it profiles them.
pub const FROZEN_WARMUP_RUNS: usize = 3;

/// How the network is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// Operation by operation through tch ([`Eager`]).
    Eager,
    /// Traced once, then frozen and fused by TorchScript and oneDNN Graph ([`frozen`]): on the
    /// CPU.
    Frozen,
}

impl Engine {
    /// Pictures below which [`Engine::Frozen`] is not worth it on a CPU with AVX-512: tracing
    /// and freezing took under a second there, and the warm-up batches run unfused while the
    /// executor profiles them.
    pub const FROZEN_MIN_PICTURES: usize = 64;

    /// The same on a CPU whose widest vector unit is AVX2 (or less, or capped to it by
    /// `ONEDNN_MAX_CPU_ISA`): measured on a 2-core AVX2 EPYC with ResNet-50 at 224 px, fp32,
    /// batches of 32 (docs/performance.md, "The feature store"), the frozen engine's fixed cost
    /// (trace, freeze, [`FROZEN_WARMUP_RUNS`] unfused batches) is about 8 s against 0.023 s
    /// saved a picture (0.081 s against eager's 0.104 s with huge pages): a break-even near
    /// 340 pictures; 238 pictures took 30.2 s frozen and 24.6 s eager.
    pub const FROZEN_MIN_PICTURES_AVX2: usize = 320;

    /// The frozen engine's threshold for a CPU whose widest vector instruction set is `isa`
    /// (as [`cpu_vector_isa`] names it) under oneDNN's instruction-set cap `onednn_cap`
    /// (`ONEDNN_MAX_CPU_ISA`).
    pub fn frozen_min_pictures(isa: &str, onednn_cap: Option<&str>) -> usize {
        let capped_below_avx512 =
            onednn_cap.map(str::to_ascii_uppercase).is_some_and(|c| !c.is_empty() && c != "ALL" && !c.contains("AVX512") && !c.contains("AMX") && !c.contains("AVX10"));
        if isa == "avx512f" && !capped_below_avx512 {
            Self::FROZEN_MIN_PICTURES
        } else {
            Self::FROZEN_MIN_PICTURES_AVX2
        }
    }

    /// The engine for `pictures` pictures of `architecture` on `device`: [`Engine::Frozen`] on
    /// the CPU from [`Engine::frozen_min_pictures`] on (64 with AVX-512, 320 without) for the
    /// families it speeds up, else [`Engine::Eager`]. Measured on a 2-core AVX512 CPU
    /// (docs/performance.md), frozen against eager: ResNet-50 fp32 1.48x, Inception-v3 fp32
    /// 1.14x, EfficientNet-Lite0 1.61x in fp32 and 1.35x in bf16 (oneDNN Graph fusion); DINOv2
    /// ViT-S/14 0.90x and ConvNeXt-T 0.79x (the fuser cannot take their graphs, so they freeze
    /// with `optimize_for_inference`), which therefore stay eager. The environment variable
    /// `LASTLAYER_ENGINE=eager|frozen` overrides the choice (`frozen` still needs the CPU).
    pub fn choose(device: Device, pictures: usize, architecture: Architecture) -> Engine {
        let possible = device == Device::Cpu;
        let worth_it = !matches!(architecture.family(), Family::VisionTransformer(_) | Family::ConvNext(_));
        match std::env::var("LASTLAYER_ENGINE").as_deref() {
            Ok("eager") => Engine::Eager,
            Ok("frozen") if possible => Engine::Frozen,
            _ if possible && worth_it && pictures >= Self::cpu_frozen_min_pictures() => Engine::Frozen,
            _ => Engine::Eager,
        }
    }

    /// [`Engine::frozen_min_pictures`] for this machine's CPU, read once.
    fn cpu_frozen_min_pictures() -> usize {
        static MIN: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *MIN.get_or_init(|| {
            let min = Self::frozen_min_pictures(cpu_vector_isa(), std::env::var("ONEDNN_MAX_CPU_ISA").ok().as_deref());
            tracing::debug!("the frozen engine from {min} pictures on (widest vector unit: {})", cpu_vector_isa());
            min
        })
    }
}

/// Asks libtorch's CPU allocator to back tensors of 2 MiB and more with transparent huge pages
/// (`THP_MEM_ALLOC_ENABLE=1`: c10 then aligns them to 2 MiB and `madvise`s them
/// `MADV_HUGEPAGE`), unless the environment already sets it. The eager engine allocates each
/// layer's activations afresh (100 MiB for a batch of 32 at ResNet-50's first layers), and with
/// 4 KiB pages the kernel spent a third of the CPU time faulting them in: measured with
/// ResNet-50 fp32 on 300 pictures on a 2-core AVX2 EPYC, 37.5 s (20.2 s system time) without,
/// 33.8 s (10.5 s) with (docs/performance.md, "The feature store"). Where the kernel's THP mode
/// is `never` it changes nothing. c10 reads the variable once, at its first allocation, so this
/// must run before any tensor is made, while the process has a single thread (the binary's
/// first line).
pub fn prefer_huge_pages() {
    if std::env::var_os("THP_MEM_ALLOC_ENABLE").is_none() {
        std::env::set_var("THP_MEM_ALLOC_ENABLE", "1");
    }
}

/// Numeric precision of the backbone's computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 32-bit floats.
    Fp32,
    /// bfloat16 weights and activations (features are returned as f32).
    Bf16,
}

/// `--precision`: a precision, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionChoice {
    /// Use this precision.
    Fixed(Precision),
    /// bf16 where it is faster: on CUDA, on a CPU with AMX (bf16 matrix units), and, on a CPU
    /// with AVX512-BF16 but no AMX, for the networks measured faster there
    /// ([`Architecture::bf16_faster_on_avx512`]: EfficientNet-Lite0, the Vision Transformers
    /// and ConvNeXt; ResNets and Inception-v3 were 5-25% slower; see docs/performance.md).
    Auto,
}

impl PrecisionChoice {
    /// The precision to use for `architecture` on `device`. `auto` logs its choice and why,
    /// naming the CPU feature it found.
    pub fn resolve(self, device: Device, architecture: Architecture) -> Precision {
        match self {
            PrecisionChoice::Fixed(p) => p,
            PrecisionChoice::Auto => {
                let (precision, why) = auto_precision(device, architecture, cpu_bf16());
                tracing::info!("--precision auto: {} for {architecture:?}: {why}", precision.name());
                precision
            }
        }
    }
}

/// What `--precision auto` chooses for `architecture` on `device` when the CPU offers `cpu`
/// for bf16, and why, in words.
pub fn auto_precision(device: Device, architecture: Architecture, cpu: CpuBf16) -> (Precision, String) {
    if device.is_cuda() {
        return (Precision::Bf16, "a CUDA GPU computes bf16 natively".into());
    }
    match cpu {
        CpuBf16::Amx => (Precision::Bf16, "this CPU has AMX-BF16 (bf16 matrix units; flag amx_bf16)".into()),
        CpuBf16::Avx512 if architecture.bf16_faster_on_avx512() => {
            (Precision::Bf16, "this CPU has AVX512-BF16 (flag avx512_bf16), measured faster in bf16 for this network".into())
        }
        CpuBf16::Avx512 => (
            Precision::Fp32,
            "this CPU has AVX512-BF16 (flag avx512_bf16) but no AMX, where this network was measured slower in bf16".into(),
        ),
        CpuBf16::None => (
            Precision::Fp32,
            format!(
                "this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 among its flags; best vector unit: {}), so bf16 \
                 would be emulated and several times slower",
                cpu_vector_isa()
            ),
        ),
    }
}

/// One line saying what `--precision auto` picks on this machine's CPU for the registry's
/// networks, and why (for `lastlayer models`).
pub fn auto_precision_summary(architectures: &[Architecture]) -> String {
    let cpu = cpu_bf16();
    let choices: Vec<(Architecture, Precision, String)> =
        architectures.iter().map(|&a| { let (p, why) = auto_precision(Device::Cpu, a, cpu); (a, p, why) }).collect();
    let bf16: Vec<String> = choices.iter().filter(|c| c.1 == Precision::Bf16).map(|c| format!("{:?}", c.0)).collect();
    let why = choices.first().map(|c| c.2.clone()).unwrap_or_default();
    match (bf16.len(), choices.len()) {
        (0, _) => format!("--precision auto on this CPU: fp32 for every model, because {why}"),
        (b, n) if b == n => format!("--precision auto on this CPU: bf16 for every model, because {why}"),
        _ => format!(
            "--precision auto on this CPU: bf16 for {} and fp32 for the rest, because this CPU has AVX512-BF16 (flag avx512_bf16) but no \
             AMX, where only those networks were measured faster in bf16",
            bf16.join(", ")
        ),
    }
}

impl Precision {
    /// `fp32` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The widest vector instruction set among the CPU's flags (`avx512f`, `avx2`, `avx`, `sse4_2`),
/// for messages.
pub fn cpu_vector_isa() -> &'static str {
    let flags = cpu_flags();
    ["avx512f", "avx2", "avx", "sse4_2"].into_iter().find(|f| flags.contains(&format!(" {f} "))).unwrap_or("none found")
}

/// `/proc/cpuinfo`'s first `flags` line, padded with spaces for whole-word search.
fn cpu_flags() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("flags")).map(|l| format!("{} ", l.replace('\t', " "))))
        .unwrap_or_default()
}

/// What the CPU offers for bf16 (ordered: `None < Avx512 < Amx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CpuBf16 {
    /// Nothing native.
    None,
    /// AVX512-BF16 dot products only.
    Avx512,
    /// AMX tiles (bf16 matrix units).
    Amx,
}

/// Reads `/proc/cpuinfo`'s flags.
pub fn cpu_bf16() -> CpuBf16 {
    let flags = cpu_flags();
    let found = if flags.contains(" amx_bf16 ") {
        CpuBf16::Amx
    } else if flags.contains(" avx512_bf16 ") {
        CpuBf16::Avx512
    } else {
        CpuBf16::None
    };
    found.min(isa_cap(std::env::var("ONEDNN_MAX_CPU_ISA").ok().as_deref(), std::env::var("ATEN_CPU_CAPABILITY").ok().as_deref()))
}

/// The most bf16 support libtorch may use under the environment's instruction-set caps:
/// oneDNN's `ONEDNN_MAX_CPU_ISA` (its convolutions and matrix products) and ATen's
/// `ATEN_CPU_CAPABILITY` (its other kernels). With `avx2` or lower, bf16 is emulated whatever
/// the CPU has, so `--precision auto` must not pick it (this is also how an AVX512 machine is
/// made to behave like an AVX2-only one, as in docs/performance.md).
fn isa_cap(onednn: Option<&str>, aten: Option<&str>) -> CpuBf16 {
    let onednn_cap = match onednn.map(str::to_ascii_uppercase).as_deref() {
        None | Some("") | Some("ALL") => CpuBf16::Amx,
        Some(isa) if isa.contains("AMX") => CpuBf16::Amx,
        Some("AVX512_CORE_BF16") | Some("AVX512_CORE_FP16") | Some("AVX10_1_512") => CpuBf16::Avx512,
        Some(_) => CpuBf16::None,
    };
    let aten_cap = match aten.map(str::to_ascii_lowercase).as_deref() {
        Some("default") | Some("avx2") => CpuBf16::None,
        _ => CpuBf16::Amx,
    };
    onednn_cap.min(aten_cap)
}

/// `--device`: a device, or `auto` (CUDA when available).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceChoice {
    /// The CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
    /// CUDA if available, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// The libtorch device, or an error when CUDA was asked for and is not there.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Auto => {
                tracing::info!("--device auto: libtorch sees no CUDA device, so everything runs on the CPU");
                Ok(Device::Cpu)
            }
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            DeviceChoice::Cuda => Err(Error::usage(
                "--device",
                "cuda was asked for but libtorch sees no CUDA device; use --device cpu (or auto)",
            )),
        }
    }
}

/// Pictures per extraction batch when `--extract-batch-size` is not given: 32 on the CPU (the
/// setting of the CPU figures in docs/performance.md), [`GPU_BATCH_SIZE`] on a GPU.
pub fn default_batch_size(device: Device) -> usize {
    if device.is_cuda() {
        GPU_BATCH_SIZE
    } else {
        CPU_BATCH_SIZE
    }
}

/// The CPU's default extraction batch.
pub const CPU_BATCH_SIZE: usize = 32;
/// A GPU's default extraction batch: large enough to keep it busy (ResNet-50 in bf16 at 224
/// pixels needs a few GB for it); the best size on a given GPU is not measured yet.
pub const GPU_BATCH_SIZE: usize = 256;

#[allow(clippy::large_enum_variant)] // built once per backbone and never moved in a loop: boxing buys nothing
enum Net {
    ResNet(ResNet),
    InceptionV3(InceptionV3),
    EfficientNetLite(EfficientNetLite),
    VisionTransformer(VisionTransformer),
    ConvNext(ConvNext),
}

/// A frozen backbone with its weights.
pub struct Backbone {
    vs: nn::VarStore,
    net: Net,
    architecture: Architecture,
    precision: Precision,
    engine: Engine,
    /// Built at the first batch (tracing needs an input); `None` if that failed.
    frozen: OnceCell<Option<FrozenModule>>,
    /// Set when the frozen module failed on a batch: the rest runs eagerly.
    frozen_failed: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("architecture", &self.architecture)
            .field("precision", &self.precision)
            .field("engine", &self.engine)
            .finish()
    }
}

impl Backbone {
    /// Builds `architecture` with random weights (PyTorch's default initialisation), in fp32.
    /// Useful for tests and for writing checkpoints with the right key names.
    pub fn random(architecture: Architecture, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let net = match architecture.family() {
            Family::ResNet(cfg) => Net::ResNet(ResNet::new(&root, cfg)),
            Family::InceptionV3 => Net::InceptionV3(InceptionV3::new(&root)),
            Family::EfficientNetLite => Net::EfficientNetLite(EfficientNetLite::lite0(&root)),
            Family::VisionTransformer(cfg) => Net::VisionTransformer(VisionTransformer::new(&root, cfg)),
            Family::ConvNext(cfg) => Net::ConvNext(ConvNext::new(&root, cfg)),
        };
        let mut backbone =
            Backbone {
            vs,
            net,
            architecture,
            precision: Precision::Fp32,
            engine: Engine::Eager,
            frozen: OnceCell::new(),
            frozen_failed: std::cell::Cell::new(false),
        };
        backbone.vs.freeze();
        backbone
    }

    /// Builds `architecture` and loads `weights` (safetensors with torchvision/timm key names).
    /// Every tensor the network needs must be there with the right shape; extra tensors (the
    /// original classifier, `num_batches_tracked`, an auxiliary head) are ignored.
    pub fn load(architecture: Architecture, weights: &Path, device: Device, precision: Precision) -> Result<Self> {
        Self::load_for_size(architecture, weights, None, device, precision)
    }

    /// [`Backbone::load`] for `input_size x input_size` pictures: a Vision Transformer's
    /// position embeddings are resampled for it once, here (in f32, before the precision is
    /// set), as timm does on loading a checkpoint for another size. `None`, or a convolutional
    /// network, changes nothing.
    pub fn load_for_size(architecture: Architecture, weights: &Path, input_size: Option<i64>, device: Device, precision: Precision) -> Result<Self> {
        // The file first: one that is no safetensors fails before a network is built.
        let tensors = read_weights(weights)?;
        let mut backbone = Self::random(architecture, Device::Cpu);
        backbone.load_weights(tensors, weights)?;
        if let Some(size) = input_size {
            backbone.set_input_size(size)?;
        }
        backbone.vs.set_device(device);
        if precision == Precision::Bf16 {
            backbone.vs.bfloat16();
        }
        // Convolution weights in channels_last layout: measured ~30% faster on CPU (oneDNN).
        tch::no_grad(|| {
            for (_, mut v) in backbone.vs.variables() {
                if v.dim() == 4 {
                    let cl = channels_last(&v);
                    v.set_data(&cl);
                }
            }
        });
        if device.is_cuda() {
            // Extraction runs batches of one shape: let cuDNN time its algorithms once and keep
            // the fastest (what PyTorch users do with `torch.backends.cudnn.benchmark = True`).
            tch::Cuda::cudnn_set_benchmark(true);
        }
        backbone.precision = precision;
        backbone.engine = Engine::choose(device, 0, architecture);
        Ok(backbone)
    }

    /// Copies `tensors` (read from `path` by [`read_weights`]) into the network's variables.
    fn load_weights(&mut self, tensors: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let missing: Vec<&str> = vars.iter().filter(|(n, _)| !tensors.contains_key(n)).map(|(n, _)| n.as_str()).collect();
        if !missing.is_empty() {
            let shown = missing.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            return Err(Error::bad_input(
                path,
                format!(
                    "{} of the {} tensors a {:?} needs are missing (for example {shown}); is this a {:?} \
                     checkpoint with timm/torchvision key names?",
                    missing.len(),
                    vars.len(),
                    self.architecture,
                    self.architecture
                ),
            ));
        }
        tch::no_grad(|| {
            for (name, var) in &mut vars {
                let src = &tensors[name.as_str()];
                if src.size() != var.size() {
                    return Err(Error::bad_input(
                        path,
                        format!("tensor '{name}' has shape {:?}, the network needs {:?}", src.size(), var.size()),
                    ));
                }
                if !matches!(src.kind(), Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double) {
                    return Err(Error::bad_input(
                        path,
                        format!("tensor '{name}' has dtype {:?}; weights must be floating point", src.kind()),
                    ));
                }
                var.f_copy_(&src.to_kind(var.kind()))?;
            }
            Ok(())
        })
    }

    /// Prepares the network for `size x size` pictures: resamples a Vision Transformer's
    /// position embeddings (an error names `--input-size` when `size` is not a multiple of its
    /// patch); convolutional networks take any size and are left as they are.
    pub fn set_input_size(&mut self, size: i64) -> Result<()> {
        if let Net::VisionTransformer(vit) = &mut self.net {
            vit.set_input_size(size).map_err(|e| Error::usage("--input-size", format!("{:?}: {e}", self.architecture)))?;
        }
        Ok(())
    }

    /// Every tensor the network needs: name (the registry's key) and shape, sorted by name.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let mut v: Vec<(String, Vec<i64>)> = self.vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
        v.sort();
        v
    }

    /// Writes the weights as safetensors with the registry's key names.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> =
            self.vs.variables().into_iter().map(|(n, t)| (n, t.to_kind(Kind::Float).to_device(Device::Cpu))).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let named: Vec<(&str, &Tensor)> = vars.iter().map(|(n, t)| (n.as_str(), t)).collect();
        crate::fsutil::write_safetensors(path, &named)
    }

    /// [`Backbone::features`] under test-time augmentation `tta`: with [`Tta::Flip`], the
    /// batch and its mirror images run as one batch of twice the pictures and each picture's
    /// two feature rows are averaged ([`average_pair`]), as `--tta flip` extraction does.
    /// `chunk` (not a fixed-size split) keeps the batch size free when traced.
    pub fn features_with(&self, batch: &Tensor, tta: Tta) -> Result<Tensor> {
        match tta {
            Tta::None => self.features(batch),
            Tta::Flip => {
                let both = self.features(&Tensor::cat(&[batch.shallow_clone(), mirror(batch)], 0))?;
                let halves = both.chunk(2, 0);
                Ok(average_pair(&halves[0], &halves[1]))
            }
        }
    }

    /// Pooled features, `[N, D]` f32 on the CPU, for a normalised f32 `[N, 3, S, S]` batch.
    pub fn features(&self, batch: &Tensor) -> Result<Tensor> {
        let kind = match self.precision {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
        };
        if let Net::VisionTransformer(vit) = &self.net {
            let side = vit.grid() * vit.config().patch;
            let size = batch.size();
            if size.len() != 4 || size[2] != side || size[3] != side {
                return Err(Error::usage(
                    "--input-size",
                    format!("{:?} was prepared for {side}x{side} pictures, got a batch of shape {size:?}", self.architecture),
                ));
            }
        }
        let out = tch::no_grad(|| -> Result<Tensor> {
            let xs = batch.f_to_device(self.vs.device())?.f_to_kind(kind)?;
            let xs = channels_last(&xs);
            let fused = self.frozen_module(&xs).map(|frozen| frozen.forward(&xs));
            let ys = match fused {
                Some(Ok(ys)) => ys,
                Some(Err(e)) => {
                    tracing::warn!("the frozen backbone failed ({e}); running it eagerly from now on");
                    self.frozen_failed.set(true);
                    self.forward(&mut Eager, &xs)
                }
                None => self.forward(&mut Eager, &xs),
            };
            Ok(ys.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?)
        })?;
        Ok(out)
    }

    /// The frozen module when the engine is [`Engine::Frozen`], built on first use from a trace
    /// of one picture of `xs`, then warmed up on [`FROZEN_WARMUP_RUNS`] zero batches of `xs`'s
    /// shape so that every real batch of that shape runs the fused graph (the executor runs
    /// its first, profiled batches unfused, which round differently in bf16). If any of that
    /// fails, the failure is logged and the backbone runs eagerly.
    fn frozen_module(&self, xs: &Tensor) -> Option<&FrozenModule> {
        if self.engine != Engine::Frozen || self.frozen_failed.get() {
            return None;
        }
        self.frozen
            .get_or_init(|| {
                let warmed = |fuse: bool| {
                    self.freeze(&xs.narrow(0, 0, 1), fuse).and_then(|m| {
                        let zeros = xs.zeros_like();
                        for _ in 0..FROZEN_WARMUP_RUNS {
                            let _ = m.forward(&zeros)?;
                        }
                        Ok(m)
                    })
                };
                // oneDNN Graph fusion first (unless LASTLAYER_FROZEN=optimize); where the fuser
                // cannot take a graph (measured: DINOv2's class-token graph), the frozen graph
                // with optimize_for_inference; else eager.
                let fused = match std::env::var("LASTLAYER_FROZEN").as_deref() {
                    Ok("optimize") => None,
                    _ => Some(warmed(true)),
                };
                let module = match fused {
                    Some(Ok(m)) => Ok(m),
                    Some(Err(e)) => {
                        tracing::info!("oneDNN Graph fusion cannot run this backbone ({e}); freezing it with optimize_for_inference");
                        warmed(false)
                    }
                    None => warmed(false),
                };
                match module {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!("could not freeze the backbone, running it eagerly: {e}");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn freeze(&self, example: &Tensor, fuse: bool) -> Result<FrozenModule> {
        let started = std::time::Instant::now();
        // One eager pass first: it computes the folded BatchNorm weights outside the trace
        // (tensors made from Rust data inside a trace are recorded without their values).
        let _ = self.forward(&mut Eager, example);
        let frozen = FrozenModule::trace(example, fuse, |x| self.forward(&mut Eager, x))?;
        tracing::debug!("backbone traced and frozen in {:.1} s", started.elapsed().as_secs_f64());
        Ok(frozen)
    }

    /// True once a batch has run through the frozen module and it has not failed since (false
    /// when the engine is eager, or the frozen module fell back to eager).
    pub fn ran_frozen(&self) -> bool {
        self.engine == Engine::Frozen && !self.frozen_failed.get() && self.frozen.get().is_some_and(Option::is_some)
    }

    /// The engine it runs with.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runs with `engine` from now on ([`Engine::Frozen`] only applies on the CPU).
    pub fn set_engine(&mut self, engine: Engine) {
        let possible = self.vs.device() == Device::Cpu;
        self.engine = if possible { engine } else { Engine::Eager };
    }

    /// The network on a normalised `[N, 3, S, S]` input, through `ops`: [`Eager`] computes
    /// pooled features `[N, D]` in the backbone's precision and layout; other [`Ops`] record
    /// the graph (the ONNX export).
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        match &self.net {
            Net::ResNet(n) => n.forward(ops, xs),
            Net::InceptionV3(n) => n.forward(ops, xs),
            Net::EfficientNetLite(n) => n.forward(ops, xs),
            Net::VisionTransformer(n) => n.forward(ops, xs),
            Net::ConvNext(n) => n.forward(ops, xs),
        }
    }

    /// Width of the features.
    pub fn feature_width(&self) -> i64 {
        match &self.net {
            Net::ResNet(n) => n.feature_width(),
            Net::InceptionV3(_) => InceptionV3::FEATURE_WIDTH,
            Net::EfficientNetLite(_) => EfficientNetLite::FEATURE_WIDTH,
            Net::VisionTransformer(n) => n.feature_width(),
            Net::ConvNext(n) => n.feature_width(),
        }
    }

    /// The precision it computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The network it is.
    pub fn architecture(&self) -> Architecture {
        self.architecture
    }

    /// The device it runs on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }
}

/// The same values with NHWC strides (PyTorch's `channels_last`), which oneDNN convolutions run
/// faster on; the shape stays `[N, C, H, W]`.
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// The tensors of a safetensors checkpoint, by name.
fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors = Tensor::read_safetensors(path)
        .map_err(|e| Error::bad_input(path, format!("cannot read as safetensors ({e}); give a .safetensors checkpoint")))?;
    Ok(tensors.into_iter().collect())
}

#[cfg(test)]
mod precision_tests {
    use super::*;

    #[test]
    fn instruction_set_caps_take_native_bf16_away() {
        assert_eq!(isa_cap(None, None), CpuBf16::Amx);
        assert_eq!(isa_cap(Some("AVX2"), None), CpuBf16::None);
        assert_eq!(isa_cap(Some("avx512_core_bf16"), None), CpuBf16::Avx512);
        assert_eq!(isa_cap(Some("AVX512_CORE_AMX"), Some("avx512")), CpuBf16::Amx);
        assert_eq!(isa_cap(None, Some("avx2")), CpuBf16::None);
        assert_eq!(isa_cap(Some("AVX512_CORE"), None), CpuBf16::None);
    }

    #[test]
    fn the_frozen_engine_threshold_follows_the_vector_unit() {
        assert_eq!(Engine::frozen_min_pictures("avx512f", None), Engine::FROZEN_MIN_PICTURES);
        assert_eq!(Engine::frozen_min_pictures("avx512f", Some("ALL")), Engine::FROZEN_MIN_PICTURES);
        assert_eq!(Engine::frozen_min_pictures("avx512f", Some("avx512_core_amx")), Engine::FROZEN_MIN_PICTURES);
        assert_eq!(Engine::frozen_min_pictures("avx512f", Some("AVX2")), Engine::FROZEN_MIN_PICTURES_AVX2);
        assert_eq!(Engine::frozen_min_pictures("avx2", None), Engine::FROZEN_MIN_PICTURES_AVX2);
        assert_eq!(Engine::frozen_min_pictures("avx", None), Engine::FROZEN_MIN_PICTURES_AVX2);
        assert_eq!(Engine::frozen_min_pictures("none found", None), Engine::FROZEN_MIN_PICTURES_AVX2);
    }

    #[test]
    fn auto_precision_names_the_cpu_feature_it_found() {
        let (p, why) = auto_precision(Device::Cpu, Architecture::Resnet50, CpuBf16::None);
        assert_eq!(p, Precision::Fp32);
        assert!(why.contains("no native bf16") && why.contains("avx512_bf16") && why.contains("emulated"), "{why}");
        let (p, why) = auto_precision(Device::Cpu, Architecture::Resnet50, CpuBf16::Amx);
        assert_eq!(p, Precision::Bf16);
        assert!(why.contains("amx_bf16"), "{why}");
        let (p, why) = auto_precision(Device::Cpu, Architecture::Resnet50, CpuBf16::Avx512);
        assert_eq!(p, Precision::Fp32);
        assert!(why.contains("avx512_bf16") && why.contains("slower"), "{why}");
        let (p, _) = auto_precision(Device::Cpu, Architecture::EfficientnetLite0, CpuBf16::Avx512);
        assert_eq!(p, Precision::Bf16);
    }
}
