"""The one base class of errors a user can act on (bad params, a missing archive, a leaking split), and the
one format of a reason a bad input was refused.

The CLI catches ``UserError`` and prints its message as one line. Each module defines its own subclass, also
deriving from the built-in error it stood for (``ValueError``, ``RuntimeError``), so the CLI needs to import none
of them: a DVC stage's imports stay the ones its work needs.
"""


class UserError(Exception):
    """An error whose message, one line meant for a person, is all a user needs to see."""


def reason(category: str, detail: object) -> str:
    """``"<category>: <detail>"`` on one line, short enough for a CSV cell (decoder messages can be long)."""
    text = " ".join(str(detail).split())
    return f"{category}: {text[:200]}"
