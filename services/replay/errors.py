"""The one error of the replay package: something the user has to change.

Invalid *events* are not errors (they go to the rejects file and the replay goes on); this is
for what stops a replay before or while it runs: an unreadable file, a column the format does
not allow, labels that cannot be read, no model answering. The CLI prints it as one line.
"""

from __future__ import annotations


class ReplayError(Exception):
    """A replay that cannot run as asked; the message says what to change."""
