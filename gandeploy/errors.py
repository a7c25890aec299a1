"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input: the message names the problem and the fix."""


class RecipeError(UserError):
    pass


class DataError(UserError):
    pass


class ArtifactError(UserError):
    pass


class BrokenArtifact(ArtifactError):
    """A file the manifest names is there but does not load, or is not what the manifest says: a failure of the
    export everywhere (verify, serve, the Sampler, bench), never a reason to skip it or to fall back to another
    backend."""


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class CheckFailed(RuntimeError):
    """An export or engine did not match its reference within tolerance; the message carries the figures."""
