import yaml
from typer.testing import CliRunner

from brainmri.cli import app

runner = CliRunner()
STAGES = ["fetch", "merge", "dedup", "split", "train", "evaluate"]


def test_every_stage_and_predict_demo_exist_with_help():
    for command in [*STAGES, "predict", "demo", "external"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Reads" in result.output or "Creates" in result.output
        assert "Writes" in result.output


def test_bad_params_are_one_line_not_a_traceback(tmp_path, params):
    params["split"]["test"] = 0.5
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for command in STAGES:
        result = runner.invoke(app, [command, "--params", str(path)])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "Traceback" not in result.output
        assert "split ratios train+val+test must sum to 1" in lines[0]


def test_missing_archive_is_one_actionable_line(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params["fetch"].update(source_set="mirror", mirrors=[str(tmp_path / "empty-mirror")], out_dir="build/raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["fetch"])
    assert result.exit_code == 1
    assert "figshare-cheng2017-jpg.zip not found in data" in result.output


def test_kaggle_without_token_says_which_zip_to_download_and_where(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    params["source_sets"]["only_sartaj"] = ["sartaj"]
    params["fetch"].update(source_set="only_sartaj", mirrors=[], out_dir="build/raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["fetch"])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "sartajbhuvaji/brain-tumor-classification-mri needs an API token" in line
    assert "save it as data/brain-tumor-classification-mri.zip" in line


def test_source_without_url_says_where_to_download_by_hand(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params["source_sets"]["only_figshare"] = ["figshare"]
    params["fetch"].update(source_set="only_figshare", mirrors=[], out_dir="build/raw")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = runner.invoke(app, ["fetch"])
    assert result.exit_code == 1
    assert "brainTumorDataPublic_1-766.zip not found" in result.output
    assert "figshare.com/articles/dataset/brain_tumor_dataset/1512427/5" in result.output


def test_a_dvc_stage_shows_bad_params_as_one_line_as_the_cli_does(tmp_path, params):
    """`python stages/<name>.py` runs the pipeline function without the CLI, with the same one-line errors."""
    import subprocess
    import sys
    from pathlib import Path

    params["split"]["test"] = 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stage = Path(__file__).resolve().parents[1] / "stages" / "split.py"
    result = subprocess.run(
        [sys.executable, str(stage)], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: params.yaml: split: split ratios train+val+test must sum to 1")


def test_stage_main_prints_the_headline_and_lets_a_bug_keep_its_traceback(tmp_path, params, monkeypatch, capsys):
    import pytest

    from brainmri.pipeline import stage_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    report = {"images_in": 5, "images_kept": 4, "duplicate_clusters": 1, "pairs": [1, 2, 3]}
    stage_main("dedup", lambda cfg: report)
    assert capsys.readouterr().out == 'dedup: {"images_in": 5, "images_kept": 4, "duplicate_clusters": 1}\n'

    def bad_archive(cfg):
        raise OSError("build/raw/x.zip: truncated")

    with pytest.raises(SystemExit) as stopped:
        stage_main("merge", bad_archive)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == "error: OSError: build/raw/x.zip: truncated\n"

    def bug(cfg):
        raise KeyError("a bug, not bad input")

    with pytest.raises(KeyError):
        stage_main("merge", bug)


def test_the_headline_counts_tumours_of_unknown_type_where_the_split_has_them(tmp_path, capsys):
    import json

    from brainmri.cli import _print_headline

    block = {"n": 80, "accuracy": 0.9, "accuracy_ci95": [0.85, 0.95], "macro_f1": 0.89, "balanced_accuracy": 0.9}
    metrics = {"val": block, "test": {**block, "unknown_type_tumours": {"n": 9, "missed": 2}}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    _print_headline(tmp_path / "metrics.json")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("val: n=80 accuracy 0.900") and len(lines) == 3
    assert lines[2] == "test: tumours of unknown type: 7 of 9 called a tumour"
