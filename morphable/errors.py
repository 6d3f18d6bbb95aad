"""The project's exception types. Every user-facing failure raises one of these with a message
that names the problem and the fix."""


class MorphableError(Exception):
    """Base class of every error morphable raises on purpose."""


class ModelNotFoundError(MorphableError, FileNotFoundError):
    """A morphable model file or folder is missing."""


class ModelFormatError(MorphableError, ValueError):
    """A model file exists but is truncated, of the wrong layout or inconsistent."""


class InputError(MorphableError, ValueError):
    """Bad user input: wrong shape, NaN/inf, empty batch, unreadable image."""


class WeightsError(MorphableError, ValueError):
    """A network weight file is missing, truncated, unsafe or of another architecture."""


class MorphableWarning(UserWarning):
    """A result was produced but is of limited use (e.g. a texture from a face only a few pixels
    wide); the message says why and what would help."""
