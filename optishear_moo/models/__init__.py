"""Model access: loading and architecture adapters."""

from .adapters import (
    ArchitectureAdapter,
    PrunableLayer,
    get_adapter,
    register_adapter,
    supported_model_types,
)
from .identity import weights_fingerprint
from .loading import DEFAULT_MODEL, load_config, load_model, load_tokenizer, resolve_device
from .placement import compute_device, offload
from .saving import SAVE_DTYPES, save_model

__all__ = [
    "DEFAULT_MODEL",
    "SAVE_DTYPES",
    "ArchitectureAdapter",
    "PrunableLayer",
    "compute_device",
    "get_adapter",
    "load_config",
    "load_model",
    "load_tokenizer",
    "offload",
    "register_adapter",
    "resolve_device",
    "save_model",
    "supported_model_types",
    "weights_fingerprint",
]
