"""stjepa: V-JEPA 2 style video pretraining with Spatiotemporal Area Attention (ST-A²)."""

__version__ = "0.1.0"
