"""refad: unified (multi-class) industrial anomaly detection by feature reconstruction."""

__version__ = "0.1.0"
