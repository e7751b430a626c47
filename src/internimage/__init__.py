"""InternImage: large vision foundation models with deformable convolutions (DCNv3), in modern PyTorch."""

__version__ = "0.1.0"

from .models import create_model, list_models
from .ops import DCNv3, dcnv3

__all__ = ["DCNv3", "create_model", "dcnv3", "list_models", "__version__"]
