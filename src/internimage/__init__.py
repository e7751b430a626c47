"""InternImage: large vision foundation models with deformable convolutions (DCNv3), in modern PyTorch."""

__version__ = "0.1.0"
