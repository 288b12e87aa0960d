import os
import subprocess
import sys
import zipfile

import pytest

from recbole_reaseq import config as cfgmod
from recbole_reaseq.config import Config, DatasetNotFoundError

from tests.conftest import REPO_ROOT, tiny_config


def test_properties_dir_is_package_data():
    root = cfgmod.properties_dir()
    assert root == os.path.join(REPO_ROOT, "recbole_reaseq", "properties")
    files = cfgmod.property_files("SASRec", "amazon-beauty")
    assert [os.path.relpath(f, root) for f in files] == [
        "overall.yaml", os.path.join("model", "SASRec.yaml"),
        os.path.join("dataset", "amazon-beauty.yaml")]
    assert [os.path.relpath(f, root) for f in cfgmod.property_files("BPR", "nothing")] == [
        "overall.yaml"]


def test_properties_ship_in_the_wheel(tmp_path):
    """After `pip install .` the YAML defaults must be inside the installed package."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                          "--no-build-isolation", "-q", "-w", str(tmp_path), REPO_ROOT],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    for rel in ("overall.yaml", "model/SASRec.yaml", "dataset/amazon-beauty.yaml",
                "dataset/ml-100k.yaml"):
        assert f"recbole_reaseq/properties/{rel}" in names


def test_precedence_defaults_file_dict_cmdline(tiny_root, workdir, tmp_path):
    base = tiny_config(tiny_root, workdir)
    c = Config("SASRec", "tiny", config_dict=base)
    assert c["stopping_step"] == 5                      # our overall.yaml over RecBole's 10
    assert c["train_neg_sample_args"]["distribution"] == "none"  # our model/SASRec.yaml
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("learning_rate: 0.005\nstopping_step: 7\n")
    c = Config("SASRec", "tiny", config_file_list=[str(yaml_file)], config_dict=base)
    assert (c["learning_rate"], c["stopping_step"]) == (0.005, 7)
    c = Config("SASRec", "tiny", config_file_list=[str(yaml_file)],
               config_dict=dict(base, learning_rate=0.01))
    assert c["learning_rate"] == 0.01
    c = Config("SASRec", "tiny", config_file_list=[str(yaml_file)],
               config_dict=dict(base, learning_rate=0.01), argv=["--learning_rate=0.02"])
    assert c["learning_rate"] == 0.02


def test_process_argv_does_not_leak(tiny_root, workdir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--epochs=999", "-q"])
    c = Config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert c["epochs"] == 1
    assert sys.argv == ["pytest", "--epochs=999", "-q"]


def test_ml100k_is_the_embedded_copy():
    import recbole

    c = Config("SASRec", "ml-100k")
    assert os.path.realpath(c["data_path"]) == os.path.realpath(
        os.path.join(os.path.dirname(recbole.__file__), "dataset_example", "ml-100k"))
    assert c["load_col"]["inter"] == ["user_id", "item_id", "timestamp"]


def test_data_path_env_and_flag(tiny_root, workdir, monkeypatch):
    cfg = tiny_config(tiny_root, workdir)
    del cfg["data_path"]
    monkeypatch.setenv(cfgmod.DATA_PATH_ENV, tiny_root)
    assert Config("SASRec", "tiny", config_dict=cfg)["data_path"] == os.path.join(tiny_root, "tiny")
    monkeypatch.delenv(cfgmod.DATA_PATH_ENV)
    c = Config("SASRec", "tiny", config_dict=cfg, argv=[f"--data_path={tiny_root}"])
    assert c["data_path"] == os.path.join(tiny_root, "tiny")


def test_unknown_dataset_says_where_it_looked(workdir, monkeypatch, tmp_path):
    monkeypatch.setenv(cfgmod.DATA_PATH_ENV, str(tmp_path / "env_data"))
    with pytest.raises(DatasetNotFoundError) as err:
        Config("SASRec", "no-such-data")
    message = str(err.value)
    assert os.path.join(str(tmp_path / "env_data"), "no-such-data", "no-such-data.inter") in message
    assert "--data_path" in message and cfgmod.DATA_PATH_ENV in message and "ml-100k" in message


def test_unknown_model_in_config():
    from recbole_reaseq.registry import RegistryError

    with pytest.raises(RegistryError, match="Valid names"):
        Config("NoSuchModel", "ml-100k")


def test_ctr_protocol_early_stops_on_ctr_valid_metric(tiny_root, workdir):
    c = Config("DIN", "tiny", config_dict=tiny_config(tiny_root, workdir, eval_protocol="ctr"))
    assert (c["valid_metric"], c["valid_metric_bigger"]) == ("gauc", True)
    c = Config("DIN", "tiny", config_dict=tiny_config(tiny_root, workdir, eval_protocol="ctr",
                                                      ctr_valid_metric="logloss"))
    assert (c["valid_metric"], c["valid_metric_bigger"]) == ("logloss", False)
    c = Config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert c["valid_metric"] == "NDCG@10"


@pytest.mark.parametrize("model,protocol", [("DIN", "ctr"), ("DIEN", "ctr"), ("ReaSeqCTR", "ctr"),
                                            ("KnowledgeDIN", "ctr"), ("SASRec", "ranking"),
                                            ("GRU4Rec", "ranking")])
def test_default_protocol_per_model(model, protocol, tiny_root, workdir):
    cfg = tiny_config(tiny_root, workdir)
    assert Config(model, "tiny", config_dict=cfg)["eval_protocol"] == protocol


@pytest.mark.parametrize("override,message", [
    ({"eval_protocol": "CTR"}, r"eval_protocol must be one of \('ranking', 'ctr'\), got 'CTR'"),
    ({"report_protocols": ["ctr", "auc"]}, r"report_protocols may list only .* got \['auc'\]")])
def test_unknown_protocol_is_refused_with_the_key_named(override, message, tiny_root, workdir):
    from recbole_reaseq.quick_start import make_config

    with pytest.raises(ValueError, match=message):
        make_config("DIN", "tiny", config_dict=tiny_config(tiny_root, workdir, **override))


def test_recbole_ensure_dir_survives_a_concurrent_mkdir(tmp_path, monkeypatch):
    """Two DDP ranks: both see the folder missing, the other rank creates it first (compat 7)."""
    import os

    import recbole.trainer.trainer as recbole_trainer
    import recbole.utils.logger as recbole_logger

    target = tmp_path / "saved"
    target.mkdir()                                  # the other rank won the race
    monkeypatch.setattr(os.path, "exists", lambda path: False)
    for ensure_dir in (recbole_trainer.ensure_dir, recbole_logger.ensure_dir):
        ensure_dir(str(target))                     # RecBole's own raises FileExistsError here
    monkeypatch.undo()
    ensure_dir(str(tmp_path / "new" / "nested"))
    assert (tmp_path / "new" / "nested").is_dir()


def test_config_get_reads_dicts_and_recbole_configs(tiny_root, workdir):
    get = cfgmod.config_get
    assert get({"a": 0}, "a", 5) == 0          # a falsy value is kept
    assert get({"a": None}, "a", 5) == 5       # None falls back to the default
    assert get({}, "a", 5) == 5                # a missing dict key too
    assert get(None, "a", 5) == 5              # no config at all (TypeError inside)
    config = Config("SASRec", "tiny", config_dict=tiny_config(tiny_root, workdir))
    assert get(config, "MAX_ITEM_LIST_LENGTH", 99) == 10   # from the config dict
    assert get(config, "stopping_step") == 5                # from our overall.yaml
    assert get(config, "no_such_key_anywhere", "fallback") == "fallback"
