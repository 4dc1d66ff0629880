"""Prefix tuning: a per-layer KV prefix, folded as ``kv_prefix [L, 2, kv_heads, P, head_dim]``."""

from ..constants import Method
from ..methods import MethodSpec, register_method
from .config import PrefixEncoder, PrefixInit, PrefixTuningConfig
from .model import PrefixTuningModule, check_folded, flat_to_kv, kv_from_folded, kv_to_flat

register_method(
    MethodSpec(
        name=Method.PREFIX_TUNING.value,
        config_cls=PrefixTuningConfig,
        module_cls=PrefixTuningModule,
        kv_from_folded=kv_from_folded,
        check_folded=check_folded,
    )
)

__all__ = ["PrefixEncoder", "PrefixInit", "PrefixTuningConfig", "PrefixTuningModule", "flat_to_kv", "kv_to_flat"]
