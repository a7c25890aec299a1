"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class UserError(ValueError):
    """Bad input: the message names the problem and the fix."""


class RecipeError(UserError):
    pass


class DataError(UserError):
    pass


class ArtifactError(UserError):
    pass


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class CheckFailed(RuntimeError):
    """An export or engine did not match its reference within tolerance; the message carries the figures."""
