"""Exceptions that name the problem, so that bad input never surfaces as a traceback from deep in torch."""


class SaekitError(Exception):
    """Base class of every error saekit raises on purpose."""


class ConfigError(SaekitError, ValueError):
    """A configuration is invalid: unknown key, wrong type, impossible value."""


class UnknownArchitectureError(ConfigError):
    """An architecture name that is not in the registry."""


class DataError(SaekitError, ValueError):
    """Activations are unusable: wrong shape or width, NaN or inf values, unreadable file."""


class ArtifactError(SaekitError, OSError):
    """A saved SAE or checkpoint is missing, incomplete or corrupted, or a file cannot be written
    (disk full, read-only folder): the message names the file."""


class DivergedError(SaekitError, FloatingPointError):
    """Training diverged (a loss that is not finite, or a reconstruction error far beyond the data's
    energy): the message names the SAE and the step. A FloatingPointError too, as numpy's are."""


class DistributedError(SaekitError, RuntimeError):
    """A distributed run lost a rank: another process died, or did not reach a collective within the
    run's ``collective_timeout_s``. The run resumes from its last checkpoint."""


class EndpointError(SaekitError, ConnectionError):
    """A chat-completions endpoint (automated interpretability) cannot be used: unreachable, refusing
    the request (authentication, unknown model), or still failing after its retries. The message
    names the URL and the cause, never the API key."""
