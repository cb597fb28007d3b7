"""`python -m refad.cli` runs the CLI."""

from refad.cli.main import main

main()
