"""DVC stage `split` (see dvc.yaml): a thin call of `brainmri split`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["split", *sys.argv[1:]], prog_name="brainmri")
