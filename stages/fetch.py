"""DVC stage `fetch` (see dvc.yaml): a thin call of `brainmri fetch`; the logic lives in src/brainmri."""

import sys

from brainmri.cli import app

if __name__ == "__main__":
    app(["fetch", *sys.argv[1:]], prog_name="brainmri")
