"""DVC stage `train` (see dvc.yaml): a thin call of `brainmri train`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="brainmri")
