//! The networks lastlayer can build. The registry (`pretrained/models.toml`) names one of these
//! for each model; everything else about a network lives beside it in this folder.

use serde::{Deserialize, Serialize};

use super::convnext::ConvNextConfig;
use super::resnet::ResNetConfig;
use super::vit::VitConfig;

/// A network architecture that lastlayer can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// ResNet-18 (basic blocks, 512 features).
    Resnet18,
    /// ResNet-34 (basic blocks, 512 features).
    Resnet34,
    /// ResNet-50 (bottlenecks, 2048 features).
    Resnet50,
    /// ResNet-101 (bottlenecks, 2048 features).
    Resnet101,
    /// ResNet-152 (bottlenecks, 2048 features).
    Resnet152,
    /// Inception-v3 (2048 features, 299x299 input).
    InceptionV3,
    /// EfficientNet-Lite0 (1280 features; TF "same" padding, ReLU6, no squeeze-excitation).
    EfficientnetLite0,
    /// DINOv2 ViT-S/14 (384 features, class token).
    VitSmallPatch14Dinov2,
    /// DINOv2 ViT-B/14 (768 features, class token).
    VitBasePatch14Dinov2,
    /// DINOv2 ViT-L/14 (1024 features, class token).
    VitLargePatch14Dinov2,
    /// DINOv2 ViT-S/14 with four registers (384 features).
    VitSmallPatch14Reg4Dinov2,
    /// DINOv2 ViT-B/14 with four registers (768 features).
    VitBasePatch14Reg4Dinov2,
    /// DINOv2 ViT-L/14 with four registers (1024 features).
    VitLargePatch14Reg4Dinov2,
    /// SigLIP ViT-B/16 at 224 px (768 features, attention pooling).
    #[serde(rename = "vit_base_patch16_siglip_224")]
    VitBasePatch16Siglip224,
    /// ConvNeXt-T (768 features).
    ConvnextTiny,
    /// ConvNeXt-B (1024 features).
    ConvnextBase,
}

/// The families of networks, each one file of this folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`super::resnet`].
    ResNet(ResNetConfig),
    /// [`super::inception_v3`].
    InceptionV3,
    /// [`super::efficientnet_lite`].
    EfficientNetLite,
    /// [`super::vit`].
    VisionTransformer(VitConfig),
    /// [`super::convnext`].
    ConvNext(ConvNextConfig),
}

impl Architecture {
    /// The family and its configuration.
    pub fn family(self) -> Family {
        use Architecture as A;
        match self {
            A::Resnet18 => Family::ResNet(ResNetConfig::resnet18()),
            A::Resnet34 => Family::ResNet(ResNetConfig::resnet34()),
            A::Resnet50 => Family::ResNet(ResNetConfig::resnet50()),
            A::Resnet101 => Family::ResNet(ResNetConfig::resnet101()),
            A::Resnet152 => Family::ResNet(ResNetConfig::resnet152()),
            A::InceptionV3 => Family::InceptionV3,
            A::EfficientnetLite0 => Family::EfficientNetLite,
            A::VitSmallPatch14Dinov2 => Family::VisionTransformer(VitConfig::dinov2_small()),
            A::VitBasePatch14Dinov2 => Family::VisionTransformer(VitConfig::dinov2_base()),
            A::VitLargePatch14Dinov2 => Family::VisionTransformer(VitConfig::dinov2_large()),
            A::VitSmallPatch14Reg4Dinov2 => Family::VisionTransformer(VitConfig::dinov2_small().with_registers()),
            A::VitBasePatch14Reg4Dinov2 => Family::VisionTransformer(VitConfig::dinov2_base().with_registers()),
            A::VitLargePatch14Reg4Dinov2 => Family::VisionTransformer(VitConfig::dinov2_large().with_registers()),
            A::VitBasePatch16Siglip224 => Family::VisionTransformer(VitConfig::siglip_base_224()),
            A::ConvnextTiny => Family::ConvNext(ConvNextConfig::tiny()),
            A::ConvnextBase => Family::ConvNext(ConvNextConfig::base()),
        }
    }

    /// Whether bf16 beats fp32 on a CPU with AVX512-BF16 but no AMX, as measured there
    /// (docs/performance.md): EfficientNet-Lite0 1.5x, DINOv2 ViT-S/14 2.2x, ConvNeXt-T 3.2x
    /// (PyTorch's own bf16 against fp32 on the same machine); ResNets and Inception-v3 were
    /// 5-25% slower in bf16.
    pub fn bf16_faster_on_avx512(self) -> bool {
        matches!(self.family(), Family::EfficientNetLite | Family::VisionTransformer(_) | Family::ConvNext(_))
    }

    /// The input size must be a multiple of this (the ViT patch), 1 for convolutional networks.
    pub fn input_multiple(self) -> i64 {
        match self.family() {
            Family::VisionTransformer(cfg) => cfg.patch,
            _ => 1,
        }
    }
}
