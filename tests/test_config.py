from pathlib import Path

import pytest

from brainmri.config import CLASSES, ConfigError, load_config, parse_config


def test_project_params_are_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml")
    assert cfg.fetch.source_set == "demo"
    assert list(cfg.active_sources()) == ["demo_figshare", "demo_kaggle", "demo_sartaj", "demo_br35h"]
    assert set(cfg.sources["kaggle_combined"].labels.values()) == set(CLASSES)


def test_mirror_set_is_one_switch(params):
    params["fetch"]["source_set"] = "mirror"
    cfg = parse_config(params)
    assert all(source.synthetic is None for source in cfg.active_sources().values())
    assert all(f.sha256 for source in cfg.active_sources().values() for f in source.files)


def test_mirror_tcga_adds_half_of_tcga_and_its_example_external_set_scores_the_other_half(params):
    """The README's `mirror_tcga` promise: the mirror plus every other TCGA patient (the ablation's half), with the
    commented-out external set in params.yaml scoring exactly the patients it leaves out."""
    import re

    import yaml

    from brainmri.config import ExternalSetConfig

    params["fetch"]["source_set"] = "mirror_tcga"
    cfg = parse_config(params)
    mirror = params["source_sets"]["mirror"]
    assert list(cfg.active_sources()) == [*mirror, "tcga_lgg_half"]
    trained = cfg.sources["tcga_lgg_half"].patients.subset
    assert (trained.every, trained.keep) == (2, 0)
    assert cfg.split.train_only_sources == ["tcga_lgg_half"]  # all 50 patients train; the others split as mirror
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    block = re.search(r"  #   - name: tcga_lgg_other_half\n((?:  #     .*\n)+)", text)
    example = yaml.safe_load("- name: tcga_lgg_other_half\n" + re.sub(r"(?m)^  #   ", "", block.group(1)))[0]
    scored = ExternalSetConfig(**example).patients.subset
    ids = [f"TCGA_{k:02d}" for k in range(11)]
    assert trained.select(ids) | scored.select(ids) == set(ids)
    assert not trained.select(ids) & scored.select(ids)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda p: p["sources"]["demo_kaggle"].update(format="tiff_stack"), "unknown source kind 'tiff_stack'"),
        (lambda p: p["split"].update(train=0.8), "must sum to 1, got 1.1"),
        (lambda p: p["train"].update(model=""), "train.model is missing"),
        (lambda p: p["train"].pop("model") and p["train"].update(model="resnet999"), "unknown model 'resnet999'"),
        (lambda p: p["fetch"].update(source_set="nope"), "fetch.source_set 'nope' is not one of"),
        (lambda p: p["source_sets"]["demo"].append("ghost"), "undeclared source(s) ['ghost']"),
        (lambda p: p["sources"]["demo_br35h"]["labels"].update(yes="tumour"), "unknown label(s) ['tumour']"),
        (lambda p: p["train"].update(epochs=0), "greater than or equal to 1"),
        (lambda p: p.update(colour="blue"), "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_params_give_one_clear_line(params, edit, message):
    edit(params)
    with pytest.raises(ConfigError) as error:
        parse_config(params, origin="params.yaml")
    text = str(error.value)
    assert message in text
    assert "\n" not in text and text.startswith("params.yaml: ")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_public_set_declares_the_original_sources(params):
    params["fetch"]["source_set"] = "public"
    cfg = parse_config(params)
    figshare = cfg.active_sources()["figshare"]
    assert figshare.format == "figshare_mat" and len(figshare.files) == 4
    assert all(len(f.md5) == 32 for f in figshare.files)
    assert cfg.active_sources()["sartaj"].files[0].kaggle == "sartajbhuvaji/brain-tumor-classification-mri"


def test_holdout_source_must_be_active(params):
    params["split"]["holdout_source"] = "kaggle_combined"
    with pytest.raises(ConfigError, match="is not in source set 'demo'"):
        parse_config(params)
    params["split"]["holdout_source"] = "demo_br35h"
    assert parse_config(params).split.holdout_source == "demo_br35h"


def test_train_only_sources_must_be_declared_and_not_held_out(params):
    params["split"]["train_only_sources"] = ["tcga_lgg_hlaf"]
    with pytest.raises(ConfigError, match="undeclared source"):
        parse_config(params)
    params["split"]["train_only_sources"] = ["tcga_lgg_half"]  # declared, outside the active set: nothing to split
    assert parse_config(params).fetch.source_set == "demo" and parse_config(params).split.train_only_sources
    params["split"]["train_only_sources"] = ["demo_br35h"]
    params["split"]["holdout_source"] = "demo_br35h"
    with pytest.raises(ConfigError, match="cannot also be"):
        parse_config(params)


def test_params_rewritten_by_dvc_still_load(tmp_path):
    """`dvc exp run -S` rewrites params.yaml in YAML 1.2 with unquoted keys such as `yes:` and `'1':`."""
    text = (Path(__file__).resolve().parents[1] / "params.yaml").read_text()
    text = text.replace('{"yes": tumor_unknown, "no": no_tumor}', "{yes: tumor_unknown, no: no_tumor}")
    text = text.replace('{"1": meningioma, "2": glioma, "3": pituitary}', "{1: meningioma, 2: glioma, 3: pituitary}")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.sources["demo_br35h"].labels == {"yes": "tumor_unknown", "no": "no_tumor"}
    assert cfg.sources["demo_figshare"].labels["1"] == "meningioma"
