"""refad: unified (multi-class) industrial anomaly detection by feature reconstruction.

Importing refad registers every method folder of `refad.models` (their configs, torch-free),
as importing timm registers its model families, so that any configuration can be read.
"""

__version__ = "0.1.0"

import refad.models  # noqa: E402, F401  (registers the methods)
