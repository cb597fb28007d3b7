"""refad.backbones."""
