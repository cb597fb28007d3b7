"""`python -m refad.cli` runs the CLI."""

from refad.cli.main import app

app()
