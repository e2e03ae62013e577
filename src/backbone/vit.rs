//! Vision Transformers without the classifier, as timm builds them: DINOv2 (class token,
//! LayerScale, optional register tokens) and SigLIP (no class token, attention pooling).
//!
//! The picture is cut into `patch x patch` squares by a strided convolution, each square
//! becomes a token, learned prefix tokens (class, registers) go in front, a learned position
//! embedding is added, and pre-norm transformer blocks follow: `x + ls1(attn(norm1(x)))`, then
//! `x + ls2(mlp(norm2(x)))`. The final LayerNorm gives the tokens; the feature is what timm's
//! `forward_head(x, pre_logits=True)` returns: the class token (DINOv2), or the attention-pooled
//! vector of a learned query with its MLP (SigLIP's `global_pool='map'`).
//!
//! Position embeddings are learned for one grid (DINOv2: 518 px / 14 = 37 x 37). For another
//! input size they are resampled once, at load time, exactly as timm's
//! `resample_abs_pos_embed` does (bicubic, antialiased, in f32); prefix-token entries are kept.
//!
//! Variable names are timm's (`patch_embed.proj`, `cls_token`, `reg_token`, `pos_embed`,
//! `blocks.0.norm1`, `blocks.0.attn.qkv`, `blocks.0.ls1.gamma`, `blocks.0.mlp.fc1`, `norm`,
//! `attn_pool.latent`, `attn_pool.q`, `attn_pool.kv`, ...). LayerNorm eps is 1e-6.
//!
//! Dosovitskiy et al., "An Image is Worth 16x16 Words", 2020; Oquab et al., "DINOv2", 2023;
//! Darcet et al., "Vision Transformers Need Registers", 2023; Zhai et al., "Sigmoid Loss for
//! Language Image Pre-Training", 2023.

use tch::{nn, Kind, Tensor};

use super::layers::{Conv, ConvSpec, LayerNorm, Linear};
use super::ops::Ops;

const LN_EPS: f64 = 1e-6;

/// How the token sequence becomes one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The class token (timm's `global_pool='token'`).
    ClassToken,
    /// Multi-head attention pooling with one learned query, then an MLP (`global_pool='map'`).
    AttentionMap,
}

/// A Vision Transformer's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitConfig {
    /// Patch side in pixels.
    pub patch: i64,
    /// Token width.
    pub dim: i64,
    /// Transformer blocks.
    pub depth: i64,
    /// Attention heads.
    pub heads: i64,
    /// Whether a class token is prepended.
    pub class_token: bool,
    /// Register tokens after the class token.
    pub reg_tokens: i64,
    /// Position embeddings cover the patch tokens only (added before the prefix is joined).
    pub no_embed_class: bool,
    /// LayerScale (`ls1`, `ls2`) in every block.
    pub layer_scale: bool,
    /// The pooling.
    pub pool: Pool,
    /// The input size the checkpoint's position embeddings are for.
    pub native_size: i64,
}

impl VitConfig {
    fn dinov2(dim: i64, depth: i64, heads: i64) -> Self {
        VitConfig {
            patch: 14,
            dim,
            depth,
            heads,
            class_token: true,
            reg_tokens: 0,
            no_embed_class: false,
            layer_scale: true,
            pool: Pool::ClassToken,
            native_size: 518,
        }
    }

    /// DINOv2 ViT-S/14 (384 wide, 12 blocks, 6 heads).
    pub fn dinov2_small() -> Self {
        Self::dinov2(384, 12, 6)
    }

    /// DINOv2 ViT-B/14 (768 wide, 12 blocks, 12 heads).
    pub fn dinov2_base() -> Self {
        Self::dinov2(768, 12, 12)
    }

    /// DINOv2 ViT-L/14 (1024 wide, 24 blocks, 16 heads).
    pub fn dinov2_large() -> Self {
        Self::dinov2(1024, 24, 16)
    }

    /// The same with four register tokens, whose position embeddings cover the patches only.
    pub fn with_registers(self) -> Self {
        VitConfig { reg_tokens: 4, no_embed_class: true, ..self }
    }

    /// SigLIP ViT-B/16 at 224 px (no class token, attention pooling).
    pub fn siglip_base_224() -> Self {
        VitConfig {
            patch: 16,
            dim: 768,
            depth: 12,
            heads: 12,
            class_token: false,
            reg_tokens: 0,
            no_embed_class: false,
            layer_scale: false,
            pool: Pool::AttentionMap,
            native_size: 224,
        }
    }

    /// The same network with `depth` blocks (for quick tests against timm's `depth=` argument).
    pub fn with_depth(self, depth: i64) -> Self {
        VitConfig { depth, ..self }
    }

    /// Tokens in front of the patches (class and registers).
    pub fn prefix_tokens(&self) -> i64 {
        i64::from(self.class_token) + self.reg_tokens
    }

    /// Prefix tokens that have a position embedding of their own.
    fn embedded_prefix(&self) -> i64 {
        if self.no_embed_class {
            0
        } else {
            self.prefix_tokens()
        }
    }
}

/// `fc1`, exact GELU, `fc2`.
#[derive(Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(p: &nn::Path, dim: i64, hidden: i64) -> Self {
        Mlp { fc1: Linear::new(p / "fc1", dim, hidden), fc2: Linear::new(p / "fc2", hidden, dim) }
    }

    fn forward<O: Ops>(&self, ops: &mut O, x: &O::Value) -> O::Value {
        let h = ops.linear(&self.fc1, x);
        let h = ops.gelu(&h);
        ops.linear(&self.fc2, &h)
    }
}

/// Multi-head self-attention with one `qkv` projection.
#[derive(Debug)]
struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: i64,
}

impl SelfAttention {
    fn forward<O: Ops>(&self, ops: &mut O, x: &O::Value) -> O::Value {
        let qkv = ops.linear(&self.qkv, x);
        let parts = ops.split_last(&qkv, 3);
        let y = ops.attention(&parts[0], &parts[1], &parts[2], self.heads);
        ops.linear(&self.proj, &y)
    }
}

/// A learned per-channel scale, initialised near 1 for random weights.
fn layer_scale(p: nn::Path, dim: i64) -> Tensor {
    p.var("gamma", &[dim], nn::Init::Uniform { lo: 0.5, up: 1.5 })
}

#[derive(Debug)]
struct Block {
    norm1: LayerNorm,
    attn: SelfAttention,
    ls1: Option<Tensor>,
    norm2: LayerNorm,
    mlp: Mlp,
    ls2: Option<Tensor>,
}

impl Block {
    fn new(p: &nn::Path, cfg: &VitConfig) -> Self {
        let d = cfg.dim;
        let a = p / "attn";
        Block {
            norm1: LayerNorm::new(p / "norm1", d, LN_EPS),
            attn: SelfAttention { qkv: Linear::new(&a / "qkv", d, 3 * d), proj: Linear::new(&a / "proj", d, d), heads: cfg.heads },
            ls1: cfg.layer_scale.then(|| layer_scale(p / "ls1", d)),
            norm2: LayerNorm::new(p / "norm2", d, LN_EPS),
            mlp: Mlp::new(&(p / "mlp"), d, 4 * d),
            ls2: cfg.layer_scale.then(|| layer_scale(p / "ls2", d)),
        }
    }

    fn forward<O: Ops>(&self, ops: &mut O, x: &O::Value) -> O::Value {
        let h = ops.layer_norm(&self.norm1, x);
        let mut h = self.attn.forward(ops, &h);
        if let Some(g) = &self.ls1 {
            h = ops.scale_last(&h, g);
        }
        let x = ops.add(x, &h);
        let h = ops.layer_norm(&self.norm2, &x);
        let mut h = self.mlp.forward(ops, &h);
        if let Some(g) = &self.ls2 {
            h = ops.scale_last(&h, g);
        }
        ops.add(&x, &h)
    }
}

/// timm's `AttentionPoolLatent`: one learned query attends over the tokens, then a projection
/// and a residual MLP; the pooled vector is that query's output.
#[derive(Debug)]
struct AttentionPool {
    latent: Tensor,
    q: Linear,
    kv: Linear,
    proj: Linear,
    norm: LayerNorm,
    mlp: Mlp,
    heads: i64,
}

impl AttentionPool {
    fn new(p: &nn::Path, cfg: &VitConfig) -> Self {
        let d = cfg.dim;
        AttentionPool {
            latent: p.var("latent", &[1, 1, d], nn::Init::Randn { mean: 0.0, stdev: 0.5 }),
            q: Linear::new(p / "q", d, d),
            kv: Linear::new(p / "kv", d, 2 * d),
            proj: Linear::new(p / "proj", d, d),
            norm: LayerNorm::new(p / "norm", d, LN_EPS),
            mlp: Mlp::new(&(p / "mlp"), d, 4 * d),
            heads: cfg.heads,
        }
    }

    fn forward<O: Ops>(&self, ops: &mut O, x: &O::Value) -> O::Value {
        let query = ops.batch_tokens(x, &self.latent);
        let q = ops.linear(&self.q, &query);
        let kv = ops.linear(&self.kv, x);
        let kv = ops.split_last(&kv, 2);
        let y = ops.attention(&q, &kv[0], &kv[1], self.heads);
        let y = ops.linear(&self.proj, &y);
        let h = ops.layer_norm(&self.norm, &y);
        let h = self.mlp.forward(ops, &h);
        let y = ops.add(&y, &h);
        ops.token(&y, 0)
    }
}

/// A headless Vision Transformer.
#[derive(Debug)]
pub struct VisionTransformer {
    cfg: VitConfig,
    patch_embed: Conv,
    cls_token: Option<Tensor>,
    reg_token: Option<Tensor>,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    attn_pool: Option<AttentionPool>,
}

impl VisionTransformer {
    /// Creates the variables under `p`, with position embeddings for `cfg.native_size`
    /// (randomly initialised until weights are loaded).
    pub fn new(p: &nn::Path, cfg: VitConfig) -> Self {
        let d = cfg.dim;
        let grid = cfg.native_size / cfg.patch;
        let init = nn::Init::Randn { mean: 0.0, stdev: 0.5 };
        let patch_embed = Conv::new(p / "patch_embed" / "proj", 3, d, ConvSpec::square(cfg.patch, cfg.patch, 0), 1);
        let positions = grid * grid + cfg.embedded_prefix();
        VisionTransformer {
            cfg,
            patch_embed,
            cls_token: cfg.class_token.then(|| p.var("cls_token", &[1, 1, d], init)),
            reg_token: (cfg.reg_tokens > 0).then(|| p.var("reg_token", &[1, cfg.reg_tokens, d], init)),
            pos_embed: p.var("pos_embed", &[1, positions, d], init),
            blocks: (0..cfg.depth).map(|i| Block::new(&(p / "blocks" / i), &cfg)).collect(),
            norm: LayerNorm::new(p / "norm", d, LN_EPS),
            attn_pool: (cfg.pool == Pool::AttentionMap).then(|| AttentionPool::new(&(p / "attn_pool"), &cfg)),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Width of the features.
    pub fn feature_width(&self) -> i64 {
        self.cfg.dim
    }

    /// The side of the patch grid the position embeddings are for now.
    pub fn grid(&self) -> i64 {
        let patches = self.pos_embed.size()[1] - self.cfg.embedded_prefix();
        (patches as f64).sqrt().round() as i64
    }

    /// Resamples the position embeddings for `size x size` pictures, as timm does when a
    /// checkpoint is loaded for another input size. `size` must be a positive multiple of the
    /// patch (the pipeline checks a user's `--input-size` first and suggests sizes that are).
    pub fn set_input_size(&mut self, size: i64) -> Result<(), String> {
        let patch = self.cfg.patch;
        if size < patch || size % patch != 0 {
            return Err(format!("{size} is not a multiple of the patch size {patch}"));
        }
        let (old, new) = (self.grid(), size / patch);
        if old == new {
            return Ok(());
        }
        let prefix = self.cfg.embedded_prefix();
        tch::no_grad(|| {
            let pos = &self.pos_embed;
            let (kind, d) = (pos.kind(), pos.size()[2]);
            let pos = pos.to_kind(Kind::Float);
            let (head, grid) = (pos.narrow(1, 0, prefix), pos.narrow(1, prefix, old * old));
            let grid = grid.reshape([1, old, old, d]).permute([0, 3, 1, 2]);
            let grid = grid.internal_upsample_bicubic2d_aa([new, new], false, None, None);
            let grid = grid.permute([0, 2, 3, 1]).reshape([1, new * new, d]);
            let resampled = Tensor::cat(&[head, grid], 1).to_kind(kind);
            self.pos_embed.set_data(&resampled);
        });
        Ok(())
    }

    /// Pooled features `[N, D]` for a normalised `[N, 3, S, S]` input, `S` the size the
    /// position embeddings are for.
    pub fn forward<O: Ops>(&self, ops: &mut O, xs: &O::Value) -> O::Value {
        let x = ops.conv(&self.patch_embed, xs);
        let patches = ops.tokens(&x);
        let mut prefix = Vec::new();
        for t in self.cls_token.iter().chain(&self.reg_token) {
            prefix.push(ops.batch_tokens(&patches, t));
        }
        let mut x = if self.cfg.no_embed_class {
            let patches = ops.add_constant(&patches, &self.pos_embed);
            prefix.push(patches);
            ops.concat_tokens(&prefix)
        } else {
            prefix.push(patches);
            let joined = if prefix.len() == 1 { prefix.pop().expect("one value") } else { ops.concat_tokens(&prefix) };
            ops.add_constant(&joined, &self.pos_embed)
        };
        for block in &self.blocks {
            x = block.forward(ops, &x);
        }
        let x = ops.layer_norm(&self.norm, &x);
        match &self.attn_pool {
            Some(pool) => pool.forward(ops, &x),
            None => ops.token(&x, 0),
        }
    }
}
