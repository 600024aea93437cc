"""The library's own error types.

Everything a user can get wrong (a config value, an env id, a file) raises a :class:`PPOKitError`
with a message that names what was wrong and where. The CLI prints that message on one line and
exits non-zero; anything else escaping is a bug in ppokit.
"""

from __future__ import annotations


class PPOKitError(Exception):
    """Base class of every error ppokit raises on purpose."""


class ConfigError(PPOKitError, ValueError):
    """A configuration value, key or file is invalid."""


class EnvError(PPOKitError):
    """An environment could not be made or is not supported."""


class ObservationError(PPOKitError, ValueError):
    """An observation given to a policy does not fit it: wrong shape, or NaN/inf values."""


class CheckpointError(PPOKitError):
    """A run directory or checkpoint is missing, incomplete or incompatible."""


class UntrustedCodeError(PPOKitError):
    """A file ppokit read back names code to import or run, and the user has not allowed it.

    ppokit never imports a module, calls a callable or runs a model's own code because a saved file
    (``state.json``, ``config.yaml``, ``resume.json``) names it: the message says what would run and
    how to allow it (name it again yourself, or pass ``--trust`` / ``trust=True``).
    """


class TrainingError(PPOKitError):
    """Training cannot continue (for example, a loss became non-finite)."""


class TrainingInterrupted(PPOKitError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint it can resume from."""

    def __init__(self, signal_name: str, checkpoint: str, resume_command: str) -> None:
        self.signal_name = signal_name
        self.checkpoint = checkpoint
        self.resume_command = resume_command
        super().__init__(
            f"stopped by {signal_name}; checkpoint saved to {checkpoint}; resume with: {resume_command}"
        )
