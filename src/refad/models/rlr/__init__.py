"""The RLR method: `config.py` (its `model` section, registry entry and presets) and
`model.py` (the network, loaded on first use so that the config stays torch-free)."""

from refad.lazy import lazy_attributes

_EXPORTS = {"RLR": "model", "RLRConfig": "config"}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
