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


def cause(e: BaseException) -> str:
    """One line for an exception raised by a user's code: its type and first line; a SystemExit or SyntaxError
    said in words."""
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r}); a module to export must not exit when imported, built or run"
    if isinstance(e, SyntaxError):
        return f"SyntaxError: {e.msg} ({(e.filename or '?').rsplit('/', 1)[-1]}, line {e.lineno})"
    first = first_line(e)
    return type(e).__name__ if first == type(e).__name__ else f"{type(e).__name__}: {first}"


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most `limit` characters:
    what a one-line error quotes of a library's or a user's exception."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
