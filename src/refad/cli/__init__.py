"""refad.cli."""
