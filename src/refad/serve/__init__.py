"""refad.serve."""
