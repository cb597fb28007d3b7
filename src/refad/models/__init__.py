"""refad.models."""
