import pytest
import torch

from recbole_reaseq import registry
from recbole_reaseq.registry import RegistryError


@pytest.fixture()
def clean_registry():
    saved_models, saved_transforms = dict(registry.MODELS), dict(registry.TRANSFORMS)
    yield
    registry.MODELS.clear(); registry.MODELS.update(saved_models)
    registry.TRANSFORMS.clear(); registry.TRANSFORMS.update(saved_transforms)


@pytest.mark.parametrize("name,module", [
    ("SASRec", "recbole.model.sequential_recommender.sasrec"),
    ("GRU4Rec", "recbole.model.sequential_recommender.gru4rec"),
    ("BERT4Rec", "recbole.model.sequential_recommender.bert4rec"),
    ("DIN", "recbole.model.sequential_recommender.din"),
    ("DIEN", "recbole.model.sequential_recommender.dien"),
    ("BPR", "recbole.model.general_recommender.bpr"),
    ("LightGCN", "recbole.model.general_recommender.lightgcn"),
    ("DeepFM", "recbole.model.context_aware_recommender.deepfm"),
    ("KGAT", "recbole.model.knowledge_aware_recommender.kgat"),
])
def test_recbole_builtins_resolve(name, module):
    cls = registry.get_model(name)
    assert cls.__name__ == name and cls.__module__ == module


def test_builtin_names_listed_and_anomaly_mode_untouched():
    names = registry.recbole_model_names()
    for name in ("SASRec", "GRU4Rec", "BERT4Rec", "DIN", "DIEN", "BPR", "LightGCN", "SINE"):
        assert name in names
    # RecBole's sine.py turns on anomaly detection at import; listing must not leave it on.
    assert not torch.is_anomaly_enabled()
    assert set(names) <= set(registry.model_names())


def test_unknown_model_lists_valid_names():
    with pytest.raises(RegistryError) as err:
        registry.get_model("NoSuchModel")
    message = str(err.value)
    assert "unknown model 'NoSuchModel'" in message
    assert "SASRec" in message and "DIN" in message and "LightGCN" in message


@pytest.mark.parametrize("name", ["SASRec", "sasrec", "Din", "LIGHTGCN"])
def test_collision_with_recbole_refused(clean_registry, name):
    with pytest.raises(RegistryError, match="collides with RecBole"):
        registry.register_model(name, object)
    assert name not in registry.MODELS


def test_register_and_duplicate(clean_registry):
    class MyModel:
        pass

    assert registry.register_model("MyModel", MyModel) is MyModel
    assert registry.get_model("MyModel") is MyModel
    assert registry.is_ours("MyModel") and not registry.is_ours("SASRec")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_model("MyModel", MyModel)


def test_transforms(clean_registry):
    from recbole_reaseq.data.transforms import TrimPadding

    assert registry.get_transform("trim_padding") is TrimPadding
    assert "trim_padding" in registry.transform_names()
    with pytest.raises(RegistryError, match="reaseq_transforms"):
        registry.get_transform("nope")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_transform("trim_padding", TrimPadding)


def test_model_import_leaves_anomaly_mode_off():
    """Importing any RecBole sequential model imports sine.py, which enables anomaly mode."""
    registry.get_model("SASRec")
    assert not torch.is_anomaly_enabled()
