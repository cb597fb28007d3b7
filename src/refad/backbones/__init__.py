"""refad.backbones: frozen ImageNet feature extractors (CNN levels, ViT blocks) behind one
interface (`Backbone`), their weights, and a feature cache."""

from refad.backbones.base import Backbone
from refad.backbones.cache import (
    CACHE_FORMAT,
    FeatureCache,
    compute_features,
    feature_cache_key,
)
from refad.backbones.cnn import CnnBackbone, FeatureExtractor
from refad.backbones.extractor import BACKBONE_CLASSES, build_extractor
from refad.backbones.vit import VitBackbone
from refad.backbones.weights import (
    PACKAGED_WEIGHTS,
    PackagedWeights,
    ResolvedWeights,
    efficientnet_pytorch_to_timm_keys,
    file_sha256,
    is_efficientnet_pytorch_state_dict,
    load_into,
    load_state_dict_file,
    packaged_weights_path,
    resolve_weights,
    to_timm_state_dict,
)

__all__ = [
    "BACKBONE_CLASSES",
    "CACHE_FORMAT",
    "PACKAGED_WEIGHTS",
    "Backbone",
    "CnnBackbone",
    "FeatureCache",
    "FeatureExtractor",
    "PackagedWeights",
    "ResolvedWeights",
    "VitBackbone",
    "build_extractor",
    "compute_features",
    "efficientnet_pytorch_to_timm_keys",
    "feature_cache_key",
    "file_sha256",
    "is_efficientnet_pytorch_state_dict",
    "load_into",
    "load_state_dict_file",
    "packaged_weights_path",
    "resolve_weights",
    "to_timm_state_dict",
]
