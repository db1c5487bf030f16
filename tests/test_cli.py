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
