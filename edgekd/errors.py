"""One exception hierarchy. Library code raises these with a message that names the fix;
`edgekd.cli.main` prints them on one line and exits with their `exit_code` (1; 2 for usage errors,
74 for I-O errors, 75 for a run directory another process holds; no traceback unless EDGEKD_DEBUG=1)."""


class EdgekdError(Exception):
    """Base class: an expected failure the user can fix."""

    exit_code = 1


class RecipeError(EdgekdError):
    """The recipe (or a --set override) is invalid."""


class DataError(EdgekdError):
    """A dataset is missing, malformed or inconsistent with the recipe."""


class RunDirError(EdgekdError):
    """The run directory or its manifest is missing, stale or inconsistent."""


class CheckpointError(EdgekdError):
    """A checkpoint or model directory cannot be used."""


class TrainingError(EdgekdError):
    """Training diverged or cannot proceed with these settings."""


class DownloadError(EdgekdError):
    """A download failed or produced a file whose hash differs from the pinned one."""


class ExportError(EdgekdError):
    """ONNX export, a parity rung or the TensorRT lint failed."""


class BundleError(EdgekdError):
    """A device bundle is incomplete, tampered with, or given inputs it cannot take."""


class UsageError(EdgekdError):
    """A CLI argument is wrong."""

    exit_code = 2


class RunLockedError(RunDirError):
    """Another process is running stages in the same run directory (try again later)."""

    exit_code = 75  # EX_TEMPFAIL


class FileWriteError(EdgekdError):
    """Writing an output failed at the OS level: no space, no permission, a read-only file system."""

    exit_code = 74  # EX_IOERR


class GateError(EdgekdError):
    """A measured result breaks a budget the recipe set (bench.baseline_floor); exit 1 like `edgekd gate`."""
