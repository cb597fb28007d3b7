"""refad.models: the methods, one folder each, and the blocks they share.

Importing this package registers every method folder (a sub-package with a `config.py`): its
config and presets enter the registry of `refad.config.methods`, torch-free; its network
loads when a model is built (`refad.models.registry.build_model`). A new method is a new
folder here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path


def _register_method_folders() -> None:
    here = Path(__file__).parent
    for module in pkgutil.iter_modules([str(here)]):
        if module.ispkg and (here / module.name / "config.py").is_file():
            importlib.import_module(f"{__name__}.{module.name}.config")


_register_method_folders()
