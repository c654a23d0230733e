"""nmt: RNN sequence-to-sequence toolkit (translation, sequence prediction, regression)."""
from nmt.registry import register

__version__ = "0.1.0"
__all__ = ["register", "__version__"]
