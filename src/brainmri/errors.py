"""The one base class of errors a user can act on (bad params, a missing archive, a leaking split), the one
line such an error is shown as, and the one format of a reason a bad input was refused.

The CLI and the DVC stage entries (``pipeline.stage_main``) both end on such an error through
``exit_with_one_line``. Each module defines its own ``UserError`` subclass, also deriving from the built-in error
it stood for (``ValueError``, ``RuntimeError``), so neither needs to import them: a DVC stage's imports stay the
ones its work needs.
"""

import pickle
import sys
from typing import NoReturn

EDGE_ERRORS = (ValueError, OSError, RuntimeError, EOFError, pickle.UnpicklingError)
"""What bad input raises from deeper down (a file that cannot be read or parsed): shown as one line with its type
at the edge (CLI, stage entry), rather than by widening every call site."""


class UserError(Exception):
    """An error whose message, one line meant for a person, is all a user needs to see."""


def reason(category: str, detail: object) -> str:
    """``"<category>: <detail>"`` on one line, short enough for a CSV cell (decoder messages can be long)."""
    text = " ".join(str(detail).split())
    return f"{category}: {text[:200]}"


def one_line(error: BaseException) -> str | None:
    """The line an error a user can act on is shown as (``error: ...``); None for anything else, a bug whose
    traceback should show."""
    if isinstance(error, UserError):
        return f"error: {error}"
    if isinstance(error, EDGE_ERRORS):
        return f"error: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
    return None


def exit_with_one_line(error: BaseException) -> NoReturn:
    """Called while ``error`` is being handled: print its ``one_line`` on stderr and exit with status 1, or
    re-raise it when it is a bug (no such line), so its traceback shows."""
    line = one_line(error)
    if line is None:
        raise  # the error being handled, with its traceback
    print(line, file=sys.stderr)
    raise SystemExit(1) from None
