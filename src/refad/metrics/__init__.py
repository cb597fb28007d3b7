"""refad.metrics."""
