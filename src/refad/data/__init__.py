"""refad.data."""
