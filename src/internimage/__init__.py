"""InternImage: large vision foundation models with deformable convolutions (DCNv3), in modern PyTorch."""

__version__ = "0.1.0"

from .models import create_model, list_models
from .models.hf_hook import install as _install_hf_hook
from .ops import DCNv3, dcnv3

# transformers' AutoConfig / AutoModel / AutoModelForImageClassification learn 'internimage' (extra [hf]) when
# transformers loads them, or now if it has; transformers itself is not imported here (models/hf_hook.py).
_install_hf_hook()

__all__ = ["DCNv3", "create_model", "dcnv3", "list_models", "__version__"]
