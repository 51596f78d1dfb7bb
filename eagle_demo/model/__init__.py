"""Native Eagle2 model: config parsing (both checkpoint layouts), vision towers, projector, loading."""

from .config import Eagle2Config
from .eagle2 import Eagle2Model
from .loading import CheckpointError, load_eagle2, resolve_checkpoint

__all__ = ["CheckpointError", "Eagle2Config", "Eagle2Model", "load_eagle2", "resolve_checkpoint"]
