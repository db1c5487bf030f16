"""DVC stage `evaluate` (see dvc.yaml): a thin call of `brainmri evaluate`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["evaluate", *sys.argv[1:]], prog_name="brainmri")
