"""`python -m refad` runs the CLI (also under torchrun)."""

from refad.cli.main import main

main()
