"""DVC stage `external@<index>` (see dvc.yaml, one per evaluate.external set): a thin call of `brainmri external <name>`."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["external", *sys.argv[1:]], prog_name="brainmri")
