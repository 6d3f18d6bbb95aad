"""morphable: 3D morphable face models, loaders, geometry and export."""
from .errors import InputError, ModelFormatError, ModelNotFoundError, MorphableError, WeightsError
from .model import ModelInfo, MorphableModel

__version__ = "0.1.0"
__all__ = ["MorphableModel", "ModelInfo", "MorphableError", "ModelFormatError", "ModelNotFoundError",
           "InputError", "WeightsError", "__version__"]
