"""refad.export."""
