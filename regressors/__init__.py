"""CNN regressors: face crop -> 3DMM shape/expression, weak-perspective pose and 68 landmarks.

* :mod:`regressors.networks`: ``Regressor`` (MobileNetV2 default, ResNet+CBAM), ``RegressorOutput``.
* :mod:`regressors.data`: pseudo-label files (``save_labels``/``load_labels``) and the augmented dataset.
* :mod:`regressors.losses`: the composite training loss and validation metrics.
* :mod:`regressors.train`: ``python -m regressors.train --labels FILE.npz --out runs/NAME``.
* :mod:`regressors.weights`: ``load_regressor``, ``save_regressor``, ``export_onnx``, ``OnnxRegressor``.
"""
from .networks import Regressor, RegressorConfig, RegressorOutput, normalize_crops
from .weights import DEFAULT_WEIGHTS, OnnxRegressor, export_onnx, load_regressor, save_regressor

__all__ = ["Regressor", "RegressorConfig", "RegressorOutput", "normalize_crops", "load_regressor", "save_regressor",
           "export_onnx", "OnnxRegressor", "DEFAULT_WEIGHTS"]
