"""Batch transforms of ours, installed on the train AND evaluation loaders.

RecBole 1.2.1's ``construct_transform`` refuses unknown names, so ours are not set through
RecBole's ``transform`` key. They are listed in the config key ``reaseq_transforms`` (names from
:mod:`recbole_reaseq.registry`) and :func:`install_transforms` composes them after RecBole's own
transform on every loader returned by ``data_preparation``: no loader subclass, no RecBole edit.
"""
from __future__ import annotations

from recbole.data.interaction import Interaction

from recbole_reaseq import registry


class Compose:
    """Apply transforms in order: ``t(dataset, interaction) -> interaction``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, dataset, interaction):
        for transform in self.transforms:
            interaction = transform(dataset, interaction)
        return interaction


def install_transforms(config, loaders) -> list:
    """Compose ``config['reaseq_transforms']`` after each loader's own transform; returns them."""
    names = config["reaseq_transforms"] or []
    if isinstance(names, str):
        names = [names]
    ours = []
    for name in names:
        transform_class = registry.get_transform(name)
        if config["model"] in getattr(transform_class, "incompatible_models", ()):
            raise ValueError(f"transform '{name}' (config key 'reaseq_transforms') cannot be used "
                             f"with {config['model']}: {transform_class.incompatible_reason} "
                             "Remove it from reaseq_transforms for this model.")
        ours.append(transform_class(config))
    if ours:
        for loader in loaders:
            loader.transform = Compose([loader.transform] + ours)
    return ours


class TrimPadding:
    """Dynamic padding: cut every ``*_list`` field to the batch's longest real sequence (+1).

    RecBole pads sequences at the end to ``MAX_ITEM_LIST_LENGTH``. Position ids count from the
    left, so removing trailing all-padding columns leaves every model's output unchanged (tested
    for SASRec, GRU4Rec and DIN). One extra column is kept so that models which append a token
    after the last item (BERT4Rec's [MASK]) see the same layout as before.

    RecBole 1.2.1's DIN and DIEN build their attention mask once with ``MAX_ITEM_LIST_LENGTH``
    columns, so they cannot take shorter batches; :func:`install_transforms` refuses them.
    """

    incompatible_models = ("DIN", "DIEN")
    incompatible_reason = ("RecBole's DIN/DIEN attention mask has a fixed MAX_ITEM_LIST_LENGTH "
                           "width.")

    def __init__(self, config):
        self.list_suffix = config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]

    def __call__(self, dataset, interaction):
        if self.length_field not in interaction.interaction:
            return interaction
        lengths = interaction[self.length_field]               # [B]
        if lengths.numel() == 0:
            return interaction
        keep = int(lengths.max()) + 1
        fields = {}
        for name, value in interaction.interaction.items():
            if name.endswith(self.list_suffix) and value.dim() >= 2 and value.shape[1] > keep:
                value = value[:, :keep].contiguous()                    # [B, keep, ...]
            fields[name] = value
        return Interaction(fields)
