"""Errors of the model package, each naming what the caller has to change.

They are plain exceptions (no HTTP status): `models/` runs in notebooks and training jobs;
the CLI maps them to one line and exit code 2, the serving layer to its own statuses.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base of every error raised on purpose by `models`."""


class TrainingDataError(ModelsError, ValueError):
    """Training or evaluation data that cannot be used; the message names the problem
    (file, row or column) so the data's owner can fix it without reading code."""


class RegistryError(ModelsError):
    """The model registry cannot do what was asked."""


class VersionExistsError(RegistryError):
    """A version is immutable: writing into an existing one is refused."""


class ModelNotFoundError(RegistryError):
    """No such model or version in the registry."""


class IntegrityError(RegistryError):
    """A registered file no longer matches the hash recorded when it was written."""


class IncompatibleModelError(RegistryError):
    """The model was trained on another feature schema than the running code computes."""


class MissingExtraError(ModelsError, ImportError):
    """An optional dependency is missing; the message says which extra installs it."""
