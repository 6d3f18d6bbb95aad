"""fitting: the batched Levenberg-Marquardt landmark fitter and the `fit` pipeline."""
from .solver import FitOptions, FitParams, FitResult, fit_landmarks

__all__ = ["FitOptions", "FitParams", "FitResult", "fit_landmarks", "fit", "track"]


def __getattr__(name):  # lazy: the pipeline pulls in OpenCV and the regressor
    if name in ("fit", "fit_all", "fit_batch", "fit_crops"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "track":  # faces through a video: fitting.video
        from . import video

        return video.track
    raise AttributeError(name)
