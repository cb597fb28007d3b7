"""refad.engine."""
