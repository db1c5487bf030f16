"""DVC stage `dedup` (see dvc.yaml): a thin call of `brainmri dedup`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["dedup", *sys.argv[1:]], prog_name="brainmri")
