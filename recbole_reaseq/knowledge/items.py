"""Item metadata of a RecBole data set, as the item dicts that the MAKR agents read.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.1: the knowledge agents reason
over each item's product data (title, category path, brand, price). This module turns a data
set's atomic ``.item`` file into exactly that, one dict per item::

    {"item_id": "B0001",            # str, the .inter/.item token
     "title": "Bath & Body Lotion",  # HTML-unescaped, NFKC, whitespace collapsed (display)
     "title_raw": "Bath &amp; Body Lotion",  # the file's string, untouched
     "categories": ["Beauty", "Skin Care", "Body"],  # path, root first; "_" -> " " per level
     "brand": "Acme" | None,
     "price": 12.5 | None}

Which column plays which role comes from :data:`recbole_reaseq.data.datasets.ITEM_META_FIELDS`
(Beauty: ``title``/``categories``/``brand``/``price``; ml-100k: ``movie_title``/``class`` and no
brand or price).

NOTE: only items that occur in the ``.inter`` file are returned (RecBole drops the others from
training anyway); items of the ``.inter`` file that lack a ``.item`` row get an empty title and
no categories and are counted (:func:`load_items` ``stats``).
NOTE: the paper reads a category *tree* whose first level is the store (Beauty: ``Beauty``); ml-100k
has genre lists instead, so its path is a root ``Movies`` (:data:`CATEGORY_ROOTS`, ours, so that
level 1 is the store as on Amazon) followed by the genres in file order (alphabetical in ml-100k):
the primary category (Layer 1, level 2) is the first genre and the subcategory (Layer 2, depth 3)
the first two genres.
NOTE: grounding (``agents.grounding_check``) quotes from ``backends.metadata_text(item)``, which
HTML-unescapes the title itself, so evidence quoted from either the raw or the display title is
accepted; ``title_raw`` is kept for audits and for re-rendering the source faithfully.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from recbole_reaseq.data.datasets import (DEFAULT_META_FIELDS, ITEM_META_FIELDS, dataset_dir,
                                          read_atomic)
from .backends import clean_text

__all__ = ["ROLES", "CATEGORY_LEVELS", "DEFAULT_CATEGORY_LEVELS", "CATEGORY_ROOTS", "meta_fields",
           "category_levels", "dataset_folder", "atomic_path", "read_inter_items", "load_items"]

ROLES = ("title", "category", "brand", "price")

# (category_level, subcategory_depth) of agents.primary_category / subcategory_of per data set.
CATEGORY_LEVELS: Dict[str, Tuple[int, int]] = {"amazon-beauty": (2, 3), "ml-100k": (2, 3)}
DEFAULT_CATEGORY_LEVELS = (2, 3)  # Amazon-style paths whose first level is the store ("Beauty")
# Level prepended to the category path of data sets whose category column has no store root.
CATEGORY_ROOTS: Dict[str, str] = {"ml-100k": "Movies"}


def meta_fields(dataset: str, fields: Optional[Mapping[str, Optional[str]]] = None
                ) -> Dict[str, Optional[str]]:
    """Role -> column name (``None``: the data set has no such column) for ``dataset``.

    ``fields`` overrides single roles, e.g. ``{"brand": None}`` for a file without brands.
    """
    out = dict(ITEM_META_FIELDS.get(dataset, DEFAULT_META_FIELDS))
    for role, column in (fields or {}).items():
        if role not in ROLES:
            raise KeyError(f"fields: unknown role {role!r}; roles are {', '.join(ROLES)}")
        out[role] = column
    return out


def category_levels(dataset: str) -> Tuple[int, int]:
    """``(category_level, subcategory_depth)`` of ``dataset`` (see :data:`CATEGORY_LEVELS`)."""
    return CATEGORY_LEVELS.get(dataset, DEFAULT_CATEGORY_LEVELS)


def dataset_folder(dataset: str, data_path: Optional[str] = None) -> str:
    """Folder that holds ``<dataset>.inter``.

    ``data_path`` may be the parent folder (RecBole's ``data_path`` before it appends the data set
    name) or the data set's folder itself (a built RecBole ``Config``'s ``data_path``).
    """
    if data_path and os.path.isfile(os.path.join(data_path, f"{dataset}.inter")):
        return os.path.abspath(data_path)
    return os.path.abspath(dataset_dir(dataset, data_path))


def atomic_path(dataset: str, suffix: str, data_path: Optional[str] = None) -> str:
    """``<folder>/<dataset>.<suffix>``; raises ``FileNotFoundError`` naming it if absent."""
    path = os.path.join(dataset_folder(dataset, data_path), f"{dataset}.{suffix}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: data set {dataset!r} needs a RecBole atomic "
                                f".{suffix} file there. Fix: pass --data_path to the folder that "
                                f"holds {dataset}/{dataset}.{suffix}.")
    return path


def _header(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [c.split(":")[0] for c in f.readline().rstrip("\r\n").split("\t")]


def read_inter_items(inter_path: str) -> List[str]:
    """Distinct item ids of an ``.inter`` file, sorted (str order)."""
    if "item_id" not in _header(inter_path):
        raise KeyError(f"{inter_path}: no column 'item_id' (header: {_header(inter_path)}). "
                       f"Fix: name the item column item_id:token.")
    inter = read_atomic(inter_path, ["item_id"])
    return sorted(inter["item_id"].dropna().unique().tolist())


def _price(value: Any) -> Optional[float]:
    if value is None:
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return p if math.isfinite(p) else None


def _text(value: Any) -> Optional[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _categories(value: Optional[str]) -> List[str]:
    """``"Beauty Hair_Care Styling_Products"`` -> ``["Beauty", "Hair Care", "Styling Products"]``
    (each level HTML-unescaped and NFKC-normalised)."""
    if not value:
        return []
    return [c for c in (clean_text(level.replace("_", " ")) for level in value.split(" ")) if c]


def load_items(dataset: str, data_path: Optional[str] = None, *,
               fields: Optional[Mapping[str, Optional[str]]] = None
               ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Item dicts (see the module docstring) of the items in ``<dataset>.inter``, by ``item_id``.

    Returns ``(items, stats)``; ``stats``: ``items``, ``items_without_metadata``,
    ``items_without_title``, ``items_with_brand``, ``items_with_price``, ``fields`` (role ->
    column), ``item_file``, ``inter_file``.

    Raises:
        FileNotFoundError: the ``.inter`` or ``.item`` file is missing (message names it).
        KeyError: a column named by the role mapping is missing (message names file, role and
            column, and how to override the mapping).
    """
    roles = meta_fields(dataset, fields)
    inter_path = atomic_path(dataset, "inter", data_path)
    item_path = atomic_path(dataset, "item", data_path)
    header = _header(item_path)
    if "item_id" not in header:
        raise KeyError(f"{item_path}: no column 'item_id' (header: {header}). Fix: name the item "
                       f"column item_id:token.")
    for role, column in roles.items():
        if column and column not in header:
            raise KeyError(f"{item_path}: column {column!r} (role {role!r} of data set "
                           f"{dataset!r}) is missing; the file has {header}. Fix: add the column, "
                           f"or map the role to another column or to None with "
                           f"fields={{{role!r}: ...}} (ITEM_META_FIELDS in "
                           f"recbole_reaseq/data/datasets.py).")
    usecols = ["item_id"] + [c for c in dict.fromkeys(roles.values()) if c]
    meta = read_atomic(item_path, usecols).drop_duplicates("item_id").set_index("item_id")
    ids = read_inter_items(inter_path)
    rows = meta.reindex(ids)
    root = [CATEGORY_ROOTS[dataset]] if dataset in CATEGORY_ROOTS else []
    items, missing = [], 0
    for item_id, row in zip(ids, rows.itertuples(index=False, name=None)):
        values = dict(zip(usecols[1:], row))
        if item_id not in meta.index:
            missing += 1
        raw_title = _text(values.get(roles["title"])) if roles["title"] else None
        brand = _text(values.get(roles["brand"])) if roles["brand"] else None
        items.append({
            "item_id": str(item_id),
            "title": clean_text(raw_title or ""),
            "title_raw": raw_title or "",
            "categories": root + _categories(_text(values.get(roles["category"]))
                                             if roles["category"] else None),
            "brand": clean_text(brand) or None,
            "price": _price(values.get(roles["price"])) if roles["price"] else None,
        })
    stats = {"items": len(items), "items_without_metadata": missing,
             "items_without_title": sum(1 for it in items if not it["title"]),
             "items_with_brand": sum(1 for it in items if it["brand"]),
             "items_with_price": sum(1 for it in items if it["price"] is not None),
             "fields": roles, "item_file": item_path, "inter_file": inter_path}
    return items, stats
