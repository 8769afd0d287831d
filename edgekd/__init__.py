"""edgekd: distill a multimodal teacher into a small fused INT8 student that ships to the edge."""

__version__ = "0.1.0"
