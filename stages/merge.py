"""DVC stage `merge` (see dvc.yaml): a thin call of `brainmri merge`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["merge", *sys.argv[1:]], prog_name="brainmri")
