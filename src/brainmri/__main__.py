"""``python -m brainmri`` is the same CLI as the ``brainmri`` command."""

from .cli import app

app(prog_name="brainmri")
