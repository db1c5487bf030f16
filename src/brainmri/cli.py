"""Command line: one sub-command per DVC stage, plus ``predict`` and ``demo``.

Every stage command reads ``params.yaml`` (``--params``), validates it, and
writes exactly the outputs ``dvc.yaml`` declares for that stage. Errors a user
can fix (bad params, a missing archive, a leaking split) print one line and
exit with status 1 instead of a traceback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer

from .config import ConfigError, load_config
from .errors import exit_with_one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="Validated params file.")]


def _reports_errors(command):
    """Turn the errors a user can act on into one line on stderr and exit status 1, as the DVC stages do
    (``errors.exit_with_one_line``)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:  # a RuntimeError too, but the commands' own way out
            raise
        except Exception as error:
            exit_with_one_line(error)

    return wrapper


def _summary(name: str, payload: dict) -> None:
    from .pipeline import headline

    typer.echo(headline(name, payload))


@app.command()
@_reports_errors
def fetch(params: ParamsOption = Path("params.yaml")) -> None:
    """Fetch the active source set's archives into fetch.out_dir (build/raw).

    Reads data/ first, then the mirror folders, then generates the synthetic demo archives or downloads.
    Writes build/raw/<source>/<file> and build/raw/fetch.json.
    """
    from .pipeline import run_fetch

    _summary("fetch", run_fetch(load_config(params)))


@app.command()
@_reports_errors
def merge(params: ParamsOption = Path("params.yaml")) -> None:
    """Merge the fetched archives into one labelled manifest of normalised 8-bit grey PNGs.

    Reads build/raw. Writes build/merged/{images,masks,manifest.csv,rejects.csv} and metrics/merge.json.
    """
    from .pipeline import run_merge

    _summary("merge", run_merge(load_config(params)))


@app.command()
@_reports_errors
def dedup(params: ParamsOption = Path("params.yaml")) -> None:
    """Cluster exact and near-duplicate images and keep one per cluster.

    Reads build/merged/manifest.csv and its images. Writes build/dedup/{manifest.csv,pairs.csv,
    fingerprints.npz,report.md,report.json,largest_clusters.png} and metrics/dedup.json.
    """
    from .pipeline import run_dedup

    _summary("dedup", run_dedup(load_config(params)))


@app.command()
@_reports_errors
def split(params: ParamsOption = Path("params.yaml")) -> None:
    """Split kept images into train/val/test by group and audit it for leakage (fails unless 0).

    Reads build/dedup. Writes build/split/{split.csv,report.json}, the curated dataset build/dataset/
    (<split>/<class>/<image_id>.png, manifest.csv, DATASHEET.md) and metrics/split.json.
    """
    from .pipeline import run_split

    _summary("split", run_split(load_config(params)))


@app.command()
@_reports_errors
def train(params: ParamsOption = Path("params.yaml")) -> None:
    """Train the classifier on the train split, selecting the best epoch on val.

    Reads build/split/split.csv and the images. Writes build/model/{model.pt,last.pt} and
    dvclive logs in metrics/train/ (metrics.json, plots/metrics/*.tsv).
    """
    from .pipeline import run_train

    _summary("train", run_train(load_config(params)))


@app.command()
@_reports_errors
def evaluate(params: ParamsOption = Path("params.yaml")) -> None:
    """Evaluate the best checkpoint on val and test.

    Reads build/model/model.pt and build/split/split.csv. Writes metrics/metrics.json, plot data under
    metrics/evaluate/ and PNG figures in build/evaluate/.
    """
    from .pipeline import run_evaluate

    _summary("evaluate", run_evaluate(load_config(params)))


@app.command()
@_reports_errors
def external(
    names: Annotated[
        list[str] | None, typer.Argument(help="External sets (names in evaluate.external); default: all.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: the train stage's model.pt).")] = None,
    ood: Annotated[
        Path | None,
        typer.Option(help="Out-of-distribution check fitted for it (default: the evaluate stage's ood.npz)."),
    ] = None,
    no_ood: Annotated[
        bool, typer.Option("--no-ood", help="Do not count refusals by the out-of-distribution check.")
    ] = False,
    temperature: Annotated[
        Path | None, typer.Option(help="Temperature fitted for it (default: the evaluate stage's temperature.json).")
    ] = None,
    no_temperature: Annotated[bool, typer.Option("--no-temperature", help="Use the uncalibrated softmax.")] = False,
    out: Annotated[
        Path | None, typer.Option(help="JSON file to write (one set only; default metrics/external/<name>.json).")
    ] = None,
) -> None:
    """Evaluate external sets with an existing checkpoint: tumour detection for every set, metrics over the
    classes a set holds, per patient where a patient table is given; images near-duplicating train/val left out.

    Reads the set, the checkpoint, the evaluate stage's ood.npz and temperature.json (fitted for that checkpoint),
    build/split/split.csv and build/dedup/fingerprints.npz. Writes metrics/external/<name>.json and
    build/external/<name>/{predictions.csv,overlaps.csv}; prints a table per set. The DVC stage external@<index>
    runs this for one set.
    """
    from .evaluation.external import summary_table
    from .pipeline import run_external

    cfg = load_config(params)
    names = names or [spec.name for spec in cfg.evaluate.external]
    if not names:
        raise ConfigError(f"{params}: evaluate.external lists no set")
    if out is not None and len(names) > 1:
        raise ConfigError("--out takes one set; name one")
    overrides = {
        k: v
        for k, v in (("checkpoint", model), ("ood", ood), ("temperature", temperature), ("metrics_path", out))
        if v is not None
    }
    overrides.update({k: None for k, off in (("ood", no_ood), ("temperature", no_temperature)) if off})
    for name in names:
        typer.echo(summary_table(run_external(cfg, name, **overrides)))


def _pipeline_sections(params: Path):
    """The train and evaluate sections of ``params``, which say where the pipeline put the checkpoint, the
    out-of-distribution check and the temperature; their defaults where there is no params file (a model
    copied elsewhere), so ``predict`` and ``export`` find them where the stages wrote them."""
    from .config import EvaluateConfig, TrainConfig

    if not params.exists():
        return TrainConfig(), EvaluateConfig()
    cfg = load_config(params)
    return cfg.train, cfg.evaluate


def _fitted_file(given: Path | None, disabled: bool, default: Path, without: str) -> Path | None:
    """The evaluate stage's file to use: none if ``disabled``, else ``given``, else ``default`` when it exists
    (with a note saying what goes ``without`` it when it does not)."""
    if disabled:
        return None
    if given is not None:
        return given
    if default.exists():
        return default
    typer.echo(f"note: no {default}; {without} (run the evaluate stage)", err=True)
    return None


@app.command()
@_reports_errors
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, folders or zip archives.")],
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint (default: the train stage's, train.out_dir/model.pt).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Output table (.csv or .json).")] = Path("predictions.csv"),
    ood: Annotated[
        Path | None,
        typer.Option(help="Out-of-distribution check (default: the evaluate stage's ood.npz when it exists)."),
    ] = None,
    no_ood: Annotated[bool, typer.Option("--no-ood", help="Give every image a class, brain MRI or not.")] = False,
    temperature: Annotated[
        Path | None,
        typer.Option(help="Temperature (default: the evaluate stage's temperature.json when it exists)."),
    ] = None,
    no_temperature: Annotated[bool, typer.Option("--no-temperature", help="Report the uncalibrated softmax.")] = False,
    gradcam: Annotated[Path | None, typer.Option(help="Folder for a Grad-CAM overlay PNG per image.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images decoded and predicted at a time.")] = 64,
    params: Annotated[
        Path, typer.Option("--params", "-p", help="Params file saying where the stages wrote their files.")
    ] = Path("params.yaml"),
) -> None:
    """Predict tumour class probabilities for new images with a trained checkpoint.

    Reads the images and the checkpoint (which carries its own preprocessing), and the out-of-distribution
    check and the temperature of the evaluate stage. Writes one row per image to --out: images unlike the
    training MRI get "not a brain MRI" and their score instead of a class; the others get calibrated class
    probabilities; unreadable files are listed with a reason and skipped (exit 1 if none is readable).
    With --gradcam, writes one overlay PNG per predicted image there.
    """
    from .serving.predict import predict_paths

    train, evaluate = _pipeline_sections(params)
    model = model or train.checkpoint
    ood = _fitted_file(ood, no_ood, evaluate.ood_file, "images are not checked for being brain MRI")
    temperature = _fitted_file(
        temperature, no_temperature, evaluate.temperature_file, "probabilities are not calibrated"
    )
    result = predict_paths(inputs, model, out, batch_size, ood=ood, temperature=temperature, gradcam_dir=gradcam)
    _summary("predict", result)


@app.command()
@_reports_errors
def export(
    model: Annotated[
        Path | None, typer.Option(help="Checkpoint (default: the train stage's, train.out_dir/model.pt).")
    ] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the exported files.")] = Path("build/export"),
    temperature: Annotated[
        Path | None,
        typer.Option(help="Temperature (default: the evaluate stage's temperature.json when it exists)."),
    ] = None,
    no_temperature: Annotated[bool, typer.Option("--no-temperature", help="Export the uncalibrated softmax.")] = False,
    params: Annotated[
        Path, typer.Option("--params", "-p", help="Params file saying where the stages wrote their files.")
    ] = Path("params.yaml"),
) -> None:
    """Export a checkpoint as TorchScript and ONNX, each returning calibrated softmax probabilities, and verify both.

    Reads the checkpoint and the evaluate stage's temperature. Writes model.ts, model.onnx and model.json
    (classes, image size, temperature, input contract) to --out-dir; exits 1 if either export's probabilities
    differ from PyTorch's.
    """
    from .serving.export import export_checkpoint

    train, evaluate = _pipeline_sections(params)
    temperature = _fitted_file(
        temperature, no_temperature, evaluate.temperature_file, "the exported probabilities are not calibrated"
    )
    _summary("export", export_checkpoint(model or train.checkpoint, out_dir, temperature=temperature))


@app.command("check-repro")
@_reports_errors
def check_repro(repo: Annotated[Path, typer.Option(help="Repository root holding dvc.yaml.")] = Path(".")) -> None:
    """Prove the pipeline reproduces: run it, compare its output hashes with the committed dvc.lock (git HEAD),
    then rerun each stage from its inputs and compare output hashes.

    Reads dvc.yaml, dvc.lock at HEAD and everything the stages read. Writes what the stages write. Prints one line
    per stage for each question and exits 1 if a stage differs from the committed lock (off the pinned CPU path:
    if its metrics move more than the tolerance) or from its rerun, if a second `dvc repro` has work to do, or if
    `dvc status` is not clean.
    """
    from .ops.reproducibility import check_reproducibility

    if not check_reproducibility(repo.resolve(), echo=typer.echo):
        raise typer.Exit(1)


@app.command()
@_reports_errors
def report(
    base: Annotated[str, typer.Option(help="Git revision to compare with.")] = "main",
    out: Annotated[Path, typer.Option(help="Markdown file to write; plot PNGs go to report_plots/ beside it.")] = Path(
        "report.md"
    ),
) -> None:
    """Write a pull-request report: params, metrics and plots of the workspace against --base.

    Reads dvc.yaml, the metrics/plots files and their versions at --base. Writes --out and its PNGs.
    """
    from .ops.report import write_report

    typer.echo(f"wrote {write_report(Path('.').resolve(), base, out.resolve())}")


@app.command()
@_reports_errors
def demo(params: ParamsOption = Path("params.yaml")) -> None:
    """Run the whole pipeline with `dvc repro` (on the synthetic demo sources by default) and show the headline metrics.

    Creates data/ if missing (the folder of hand-supplied archives that data.dvc tracks). Writes everything
    the stages write; ends with the val and test accuracy and macro-F1.
    """
    from .ops.dvc_run import run_dvc

    load_config(params)  # fail on bad params before any work
    Path("data").mkdir(exist_ok=True)
    typer.echo("$ dvc repro")
    run_dvc(Path("."), "repro", capture=False)
    _print_headline(Path("metrics/metrics.json"))
    typer.echo(
        "All metrics: `dvc metrics show`. Plots: `dvc plots show`, then open dvc_plots/index.html; "
        "PNG figures, Grad-CAM overlays and MODEL_CARD.md are in build/evaluate/."
    )


def _print_headline(metrics_path: Path) -> None:
    """The few numbers a person looks at first, from the evaluate stage's metrics file."""
    metrics = json.loads(metrics_path.read_text())
    for split in ("val", "test"):
        m = metrics[split]
        low, high = m.get("accuracy_ci95", [float("nan")] * 2)
        typer.echo(
            f"{split}: n={m['n']} accuracy {m['accuracy']:.3f} (95% CI {low:.3f}-{high:.3f}) "
            f"macro-F1 {m['macro_f1']:.3f} balanced accuracy {m['balanced_accuracy']:.3f}"
        )
        if unknown := m.get("unknown_type_tumours"):
            found = unknown["n"] - unknown["missed"]
            typer.echo(f"{split}: tumours of unknown type: {found} of {unknown['n']} called a tumour")
