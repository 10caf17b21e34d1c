"""normbench: compare normalization layers in CNNs as the per-device batch shrinks."""

__version__ = "0.1.0"
