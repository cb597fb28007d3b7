"""A test-only method laid out as a method folder of `refad.models` is: `config.py` registers
it (config, preset, smallest settings), `model.py` is the network. Nothing outside this folder
names it; `tests/conftest.py` imports its config, as `refad.models` imports its own folders."""
