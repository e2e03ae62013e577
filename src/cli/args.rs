//! Command-line arguments (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Retrain the last layer of an ImageNet-pretrained backbone on your images: features are
/// extracted once and cached, so retraining with other settings takes seconds.
#[derive(Debug, Parser)]
#[command(name = "lastlayer", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Cache folder for features, downloaded data and pins [default: $LASTLAYER_CACHE,
    /// $XDG_CACHE_HOME/lastlayer or ~/.cache/lastlayer]. Hub weights go to the Hugging Face cache
    /// ($HF_HOME).
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Use only what is cached; never touch the network.
    #[arg(long, global = true)]
    pub offline: bool,
    /// Where the backbone runs.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Print one JSON object (or array) on stdout instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Less logging (-q: warnings only, -qq: errors only; no progress).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Plain log lines instead of progress bars, even on a terminal.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Also append the log lines to this file.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// A model registry to use instead of the built-in one (same format as pretrained/models.toml).
    #[arg(long, global = true, value_name = "FILE", env = "LASTLAYER_REGISTRY")]
    pub registry: Option<PathBuf>,
}

/// `--device`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Auto,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    Fp32,
    Bf16,
    /// bf16 where measured faster (CUDA; CPUs with AMX; EfficientNet-Lite0 on AVX512-BF16), else fp32.
    Auto,
}

/// `--format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// TorchScript: torch.jit.load in Python, torch::jit::load in C++.
    Torchscript,
    /// ONNX (opset 17): onnxruntime and other ONNX runtimes.
    Onnx,
}

/// `--rank-by`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RankByArg {
    /// The probability of the given label.
    SelfConfidence,
    /// The probability of the given label minus the largest other one.
    NormalizedMargin,
}

/// `--optimizer`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    Adamw,
    Adam,
    Sgd,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the registered backbones.
    Models,
    /// Download a model's weights from the Hugging Face Hub and verify them.
    Fetch {
        /// Registry name (see `lastlayer models`).
        model: String,
    },
    /// Convert a state dict with another layout (.pth, .pt or .safetensors) into the
    /// registry's safetensors layout, for `--weights`.
    Import {
        /// The state dict to convert.
        file: PathBuf,
        /// The backbone it holds (see `lastlayer models`).
        #[arg(long)]
        model: String,
        /// The safetensors file to write (atomically; nothing is written on failure).
        #[arg(long, value_name = "OUT.safetensors")]
        out: PathBuf,
    },
    /// Extract features into the cache (nothing is recomputed that is already there).
    Extract(ExtractArgs),
    /// Train a new last layer on cached features (extracting what is missing) and export it.
    Train(TrainArgs),
    /// Fetch, extract, train, evaluate and export in one go.
    Run(RunArgs),
    /// Try a grid of learning rates and weight decays on cached features (the backbone runs
    /// at most once), print them sorted by validation accuracy, and export the best head.
    Sweep(SweepArgs),
    /// Evaluate a trained run on its test split.
    Eval {
        /// A run folder written by `train` or `run`.
        run_dir: PathBuf,
        /// Pictures per backbone batch, if features must be extracted [default: 32 on the
        /// CPU, 256 on a GPU].
        #[arg(long)]
        extract_batch_size: Option<usize>,
        /// A folder of pictures of none of the run's classes: report how well the run's
        /// unknown score and the top softmax probability tell them from the test pictures
        /// (AUROC, FPR at 95% kept).
        #[arg(long, value_name = "DIR")]
        unknown_dir: Option<PathBuf>,
    },
    /// What a run gets wrong, and why: its confident test mistakes, likely wrong labels (confident
    /// learning on out-of-fold probabilities of K heads trained on the cached features) and
    /// test pictures with a copy in train (and copies within a split), as a table, --json, and
    /// the page RUN_DIR/review.html.
    Review {
        /// A run folder written by `train`, `run` or `sweep`.
        run_dir: PathBuf,
        /// Folds: K heads, each trained on the other folds' pictures, judge the training
        /// pictures they did not see.
        #[arg(long, default_value_t = lastlayer::review::DEFAULT_FOLDS)]
        folds: usize,
        /// How likely label errors are ranked.
        #[arg(long, value_enum, default_value = "self-confidence")]
        rank_by: RankByArg,
        /// Cosine similarity (of whitened features) from which two pictures are near-duplicates.
        #[arg(long, default_value_t = lastlayer::review::DEFAULT_MIN_SIMILARITY, allow_negative_numbers = true)]
        min_similarity: f64,
        /// Do not write RUN_DIR/review.html.
        #[arg(long)]
        no_page: bool,
        /// Rows of each list in the table on stdout (--json has them all).
        #[arg(long, default_value_t = 10, value_name = "N")]
        show: usize,
        /// Pictures per backbone batch, if features must be extracted [default: 32 on the
        /// CPU, 256 on a GPU].
        #[arg(long)]
        extract_batch_size: Option<usize>,
    },
    /// Is a run (in the background, say) running, finished or dead, and how far did it get?
    Status {
        /// A run folder given to `train --out` or `run --out`.
        run_dir: PathBuf,
    },
    /// See, check and delete cached features.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Export a run's whole classifier (backbone + head) for other runtimes.
    Export {
        /// A run folder written by `train`, `run` or `sweep`.
        run_dir: PathBuf,
        /// Format: TorchScript (torch.jit.load in Python, torch::jit::load in C++) or ONNX
        /// (onnxruntime and other ONNX runtimes).
        #[arg(long, value_enum, default_value = "torchscript")]
        format: FormatArg,
        /// File to write [default: RUN_DIR/model.pt, or RUN_DIR/model.onnx].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Classify pictures (files or folders) with a trained run.
    Predict {
        /// A run folder written by `train` or `run`.
        run_dir: PathBuf,
        /// Picture files (JPEG, PNG, HEIC, WebP, TIFF...), or folders of them.
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
        /// How many classes to show per picture.
        #[arg(long, short = 'k', default_value_t = 5)]
        top_k: usize,
        /// Pictures per backbone batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// `on`: a picture scoring below the run's unknown threshold is answered as unknown
        /// (`"unknown"` and `"score"` in --json); `off`: top classes only, as before.
        #[arg(long, value_enum, default_value = "on")]
        reject: RejectArg,
    },
    /// Serve a trained run over HTTP: POST /predict (a picture's bytes in, JSON top classes
    /// out; requests that arrive together share a forward pass), GET /health, GET /metrics
    /// (Prometheus), and GET / a page to try pictures in a browser. Stops on Ctrl-C or SIGTERM.
    Serve {
        /// A run folder written by `train`, `run` or `sweep`.
        run_dir: PathBuf,
        /// Address to listen on (0.0.0.0: every interface).
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port to listen on (0: a free one, printed at start).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Largest request body, in MiB; larger ones are refused with 413.
        #[arg(long, default_value_t = 16, value_name = "MIB")]
        max_body_mb: usize,
        /// Pictures that may wait for the model; requests beyond are refused with 503.
        #[arg(long, default_value_t = 32)]
        queue: usize,
        /// Most pictures per forward pass [default: the extraction batch size, 32 on the CPU,
        /// 256 on a GPU].
        #[arg(long, value_name = "N")]
        max_batch: Option<usize>,
        /// Longest a picture waits, in milliseconds, for requests still being decoded to join
        /// its batch (a picture with none on their way runs at once).
        #[arg(long, default_value_t = 5, value_name = "MS")]
        max_wait_ms: u64,
        /// Longest a request may take from its arrival to its answer, in seconds; past it, 503
        /// (408 while its body is still arriving).
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        timeout: f64,
        /// `on`: answers carry `"unknown"` and `"score"` from the run's unknown threshold;
        /// `off`: top classes only, as before.
        #[arg(long, value_enum, default_value = "on")]
        reject: RejectArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the feature stores (recipe, rows, bytes) and the split entries made from them.
    Ls,
    /// Check every store record against its checksum and every entry against its manifest
    /// (size and blake3); exit 5 if any is damaged (damaged rows are computed again when next
    /// needed).
    Verify,
    /// Drop the store rows that no split used within --older-than, and the split entries not
    /// used since; nothing in use (recently used, or being extracted now) is removed.
    Prune {
        /// How long unused rows are kept: a duration like `30d`, `12h`, `0s`.
        #[arg(long, default_value = "30d", value_name = "DURATION")]
        older_than: String,
    },
    /// Merge every complete set of shard entries (`extract --shard`) into its split's entry,
    /// then delete the shards; `train`, `sweep` and `eval` do the same on first use.
    Merge,
    /// Delete cache entries: those given (folders or digests), or all of a model, or all.
    Rm {
        /// Entry folders or digests (as `cache ls` shows them).
        entries: Vec<String>,
        /// Every entry and store of this model.
        #[arg(long)]
        model: Option<String>,
        /// Earlier versions' unfinished extractions (`*.partial` folders).
        #[arg(long)]
        partial: bool,
        /// Everything.
        #[arg(long)]
        all: bool,
    },
}

/// Which model, which data, which sample.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Backbone (see `lastlayer models`).
    #[arg(long)]
    pub model: String,
    /// `cifar10`, a folder of pictures (one subfolder per class, or a metadata.csv /
    /// metadata.jsonl naming each picture's class), WebDataset tar shards
    /// (a folder of .tar files, a pattern like `train-{000000..000099}.tar`), or a Hugging
    /// Face Hub data set: hf:OWNER/NAME[@REVISION][:CONFIG].
    #[arg(long)]
    pub data: String,
    /// WebDataset: the test split's tar shards (a folder or a brace pattern).
    #[arg(long, value_name = "SHARDS")]
    pub test_data: Option<String>,
    /// An existing `cifar-10-batches-bin` folder (or its parent) instead of downloading.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// For a folder without a test subfolder: share of pictures put in test.
    #[arg(long, default_value_t = 0.2)]
    pub test_fraction: f64,
    /// For a folder: a `.csv` or `.jsonl` file of `file_name` (relative to --data) and label
    /// columns, instead of the folder's metadata.csv / metadata.jsonl or class subfolders.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// The column that holds the class (in --labels, the folder's metadata file, or a Hub
    /// data set) [default: `label`, else `labels`, else the only column besides the file
    /// name; for a Hub data set, its one ClassLabel column].
    #[arg(long, value_name = "NAME")]
    pub label_column: Option<String>,
    /// For a Hub data set (hf:OWNER/NAME): the column that holds the pictures [default: the
    /// one column that is a struct of bytes and path].
    #[arg(long, value_name = "NAME")]
    pub image_column: Option<String>,
    /// For a folder: stop at an unreadable picture instead of skipping it with a warning.
    #[arg(long)]
    pub strict: bool,
    /// Use this fraction of each class of each split (stratified, seeded), e.g. 0.05.
    #[arg(long, conflicts_with = "limit")]
    pub sample: Option<f64>,
    /// Use at most N rows of each split (stratified, seeded).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Seed of --sample / --limit.
    #[arg(long, default_value_t = 0)]
    pub sample_seed: u64,
    /// Backbone precision (`LASTLAYER_PRECISION` sets it for every command that has the flag).
    #[arg(long, value_enum, default_value = "auto", env = "LASTLAYER_PRECISION")]
    pub precision: PrecisionArg,
    /// A local safetensors file (registry key names) instead of the Hub weights.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Input size in pixels (square): the registry's default for the model when absent. For a
    /// Vision Transformer, a multiple of its patch size (14 for DINOv2); its position
    /// embeddings are resampled to it. Part of the cache key.
    #[arg(long, value_name = "N")]
    pub input_size: Option<i64>,
    /// Pictures per backbone batch [default: 32 on the CPU, 256 on a GPU].
    #[arg(long)]
    pub extract_batch_size: Option<usize>,
    /// Extraction saves its progress to the feature store every this many rows (rounded up to
    /// whole batches; by default every batch); a killed run resumes from there.
    #[arg(long, value_name = "N")]
    pub chunk_rows: Option<usize>,
    /// Extra views of every training picture, extracted once and cached (the head trains on
    /// all of them): `flip` (the mirror image), `crops=N` (random resized crops),
    /// `jitter=X` (the crops' colour), `scale=X` (a crop's smallest share of the area, 0.35),
    /// `seed=N`; comma separated, e.g. `flip,crops=4`. Part of the cache key.
    #[arg(long, value_name = "SPEC")]
    pub augment: Option<String>,
    /// Test-time augmentation: `flip` averages each test picture's features with its mirror
    /// image's; predict, serve and the exports of the run then do the same.
    #[arg(long, value_enum, default_value = "none")]
    pub tta: TtaArg,
}

/// `--tta`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TtaArg {
    /// The picture alone.
    None,
    /// The mean of the picture's and its mirror image's features.
    Flip,
}

/// Head training settings.
#[derive(Debug, Args)]
pub struct HeadArgs {
    /// Most epochs (training stops earlier when the validation loss stops improving); with a
    /// fixed `--weight-decay` and for the streamed head (the tuned path in memory runs L-BFGS).
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Minibatch size (a fixed `--weight-decay`, the streamed head).
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Optimiser of a fixed `--weight-decay` (the tuned path runs full-batch L-BFGS).
    #[arg(long, value_enum, default_value = "adamw")]
    pub optimizer: OptimizerArg,
    /// Share of each class of train held out for validation (early stopping, model choice).
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Seed of the validation split and the shuffles; the same seed gives the same head.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many epochs without a lower validation loss.
    #[arg(long, default_value_t = 10)]
    pub patience: usize,
    /// Learning-rate schedule (a fixed `--weight-decay`, the streamed head).
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Keep the head trained without the validation rows, instead of training it once more on
    /// all of train with the chosen penalty (or epoch) after the choice.
    #[arg(long)]
    pub no_refit: bool,
    /// How much each class's pictures count in the loss: `balanced` weighs a class's pictures
    /// by N / (classes · pictures of the class), as scikit-learn's `class_weight="balanced"`,
    /// so that rare classes count as much as common ones; `none` counts every picture once.
    #[arg(long, value_enum, default_value = "none")]
    pub class_weight: ClassWeightArg,
    /// The share of in-class pictures answered as a class, not as unknown: the unknown
    /// threshold keeps this share of the validation pictures (in (0, 1]; 1 keeps them all).
    #[arg(long, default_value_t = lastlayer::head::unknown::DEFAULT_KEEP)]
    pub keep: f64,
}

/// `--reject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RejectArg {
    /// Pictures below the run's unknown threshold are answered as unknown.
    On,
    /// Top classes only, no verdict.
    Off,
}

impl From<RejectArg> for lastlayer::pipeline::Reject {
    fn from(r: RejectArg) -> Self {
        match r {
            RejectArg::On => lastlayer::pipeline::Reject::On,
            RejectArg::Off => lastlayer::pipeline::Reject::Off,
        }
    }
}

/// `--class-weight`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ClassWeightArg {
    /// Every picture counts once.
    None,
    /// Rare classes count more: N / (classes · pictures of the class).
    Balanced,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    /// Cosine decay to 0 over --epochs.
    Cosine,
    /// --lr throughout.
    Constant,
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Splits to extract, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "train,test")]
    pub split: Vec<String>,
    /// Extract only this worker's share of each split: `I/N` (0-based), or `auto` (Slurm array
    /// or Kubernetes Indexed Job variables; `auto/N` gives the count). See docs/usage.md.
    #[arg(long, value_name = "I/N|auto")]
    pub shard: Option<String>,
}

/// Learning rate and weight decay of one head.
#[derive(Debug, Args)]
pub struct RateArgs {
    /// Learning rate (a fixed `--weight-decay`, the streamed head; the tuned path in memory
    /// runs L-BFGS, which needs none).
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    pub lr: f64,
    /// Weight decay: a number, or `auto` to tune an L2 penalty on the validation split (a
    /// path from strong to weak, each penalty minimised to convergence, warm-started; the
    /// penalty kept has the lowest validation loss at its best temperature).
    #[arg(long, default_value = "auto", value_parser = parse_weight_decay, allow_negative_numbers = true)]
    pub weight_decay: WeightDecayArg,
}

/// `--weight-decay`: `auto` or a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightDecayArg {
    /// Tuned on the validation split.
    Auto,
    /// This value.
    Value(f64),
}

fn parse_weight_decay(s: &str) -> Result<WeightDecayArg, String> {
    if s == "auto" {
        return Ok(WeightDecayArg::Auto);
    }
    s.parse::<f64>().map(WeightDecayArg::Value).map_err(|_| format!("'{s}' is neither `auto` nor a number"))
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Run folder to write (head.safetensors, head.json, metrics.json).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Learning rates to try, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1e-4,3e-4,1e-3,3e-3,1e-2", allow_negative_numbers = true)]
    pub lr: Vec<f64>,
    /// Weight decays to try, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1e-4,1e-3,1e-2", allow_negative_numbers = true)]
    pub weight_decay: Vec<f64>,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Run folder for the best head (with sweep.json, every result).
    #[arg(long, value_name = "RUN_DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub rates: RateArgs,
    #[command(flatten)]
    pub head: HeadArgs,
    /// Run folder to write [default: runs/<model>-<data>-<time>].
    #[arg(long, value_name = "RUN_DIR")]
    pub out: Option<PathBuf>,
}
