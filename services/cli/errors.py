"""How the CLI turns user mistakes into one clear line and exit code 2.

Commands wrap their body in `run_guarded`; exceptions that mean "the user must change
something" (bad configuration, bad option, unreachable broker) are printed without a
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from services.common.config import ConfigError

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake the user can fix; the message says how."""


def run_guarded(body: Callable[[], None]) -> None:
    """Run a command body, mapping user errors to a message on stderr and exit code 2."""
    try:
        body()
    except (ConfigError, UserError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(USER_ERROR_EXIT_CODE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
