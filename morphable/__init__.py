"""morphable: 3D morphable face models, loaders, geometry and export.

``mesh, pose = morphable.fit(image)`` fits the largest face of a photo (the same function as
:func:`fitting.fit`; imported on first use, so ``import morphable`` stays light).
"""
from .errors import (InputError, ModelFormatError, ModelNotFoundError, MorphableError, MorphableWarning,
                     WeightsError)
from .model import ModelInfo, MorphableModel

__version__ = "0.1.0"
__all__ = ["MorphableModel", "ModelInfo", "MorphableError", "ModelFormatError", "ModelNotFoundError",
           "InputError", "WeightsError", "MorphableWarning", "fit", "__version__"]


def __getattr__(name):  # lazy: the pipeline pulls in OpenCV, the regressor and the detector
    if name == "fit":
        try:
            from fitting import pipeline
        except ImportError as e:
            raise ImportError(f"morphable.fit needs the fitting package ({e}); reinstall morphable") from e
        return pipeline.fit
    raise AttributeError(f"module 'morphable' has no attribute {name!r}")
