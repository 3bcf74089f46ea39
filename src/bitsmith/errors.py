"""The one error family: every error bitsmith raises on purpose is a :class:`BitsmithError`.

The command line maps the family to its stable exit codes in one place
(``exit_code``): 2 for bad input (:class:`InputError`: an invalid option, config,
policy, model, checkpoint or data file; the message names the input and the fix),
3 for a budget no configuration can meet (:class:`InfeasibleError`), 1 for the rest.
Subclasses keep their historical built-in bases (``ValueError``, ``RuntimeError``)
so that existing ``except ValueError`` code still catches them.
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3


class BitsmithError(Exception):
    """Base of every error bitsmith raises deliberately."""

    exit_code: int = EXIT_ERROR


class InputError(BitsmithError, ValueError):
    """Bad input from the user: the message names the input, the field and the fix."""

    exit_code = EXIT_BAD_INPUT


class InfeasibleError(BitsmithError):
    """A budget that no configuration of the search space can meet."""

    exit_code = EXIT_INFEASIBLE


def exit_code_of(err: BaseException) -> int:
    """The command line's exit code for ``err`` (1 for anything outside the family)."""
    return err.exit_code if isinstance(err, BitsmithError) else EXIT_ERROR


def one_line(text: object, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters: for
    quoting a third-party exception inside a bitsmith error message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
