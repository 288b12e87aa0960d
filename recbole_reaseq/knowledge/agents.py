"""The three agent layers of multi-agent knowledge reasoning (MAKR), grounding, and item texts.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.1 and the Appendix prompts.

* Layer 1 (:func:`build_taxonomy`): per primary category, a *demand* agent and an *attribute*
  agent read the category's items batch by batch and iteratively merge semantically similar
  expressions into dimensions, creating a new dimension only when none fits.
* Layer 2 (:func:`refine_dimensions`): per subcategory, an agent refines the inherited dimensions
  on a representative item sample into an orthogonal, comprehensive, objective set, each dimension
  justified as inherited or new and mapped to attribute values and expressions, with a reasoning
  trace.
* Layer 3 (:func:`item_knowledge`): per item, one entry per supported dimension of both
  perspectives: dimension label, verbatim evidence, analysis, keywords. Evidence is checked by
  :func:`grounding_check`; ungrounded evidence triggers a (bounded) re-ask on an LLM backend and is
  otherwise dropped and counted. The grounding rate is reported in the stats.
* :func:`demand_text` / :func:`attribute_text`: the per-item texts encoded later
  (``"need: moisturizing, anti-aging; target: women"``), see ``encode.py``.

NOTE: the paper's demand agents read Taobao search queries; public Amazon data has none, so the
demand stream reads titles and category paths (see ``prompts/l1_demand.v1.txt``).
NOTE: the paper does not say how items are batched for Layer 1 or sampled for Layer 2; here
batches follow ``item_id`` order and the sample is the ``sample_size`` items with the smallest
sha256 of their ``item_id`` (deterministic and unrelated to id order).
NOTE: the Layer 2 schema has no stream field, so Layer 2 runs once per (subcategory, stream).
NOTE: after each Layer 1 answer, dimensions of the previous state that the model dropped are put
back and same-named dimensions are merged, so the taxonomy only grows (the paper's "iterative
merge" made explicit).
NOTE: Layer 3 entries naming a dimension that is not in the refined set, or left with no grounded
evidence, are dropped and counted; the paper gives no policy for either.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import re
import string
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .backends import (LLMBackend, LLMRequest, clean_category, clean_text, metadata_text)
from .schemas import schema_json

__all__ = [
    "STREAMS", "PROMPTS_DIR", "load_prompt", "render_prompt", "validate_items", "primary_category",
    "subcategory_of", "group_by_category", "group_by_subcategory", "representative_sample",
    "normalize_for_grounding", "GroundingResult", "grounding_check", "filter_grounded",
    "merge_dimensions", "build_taxonomy", "refine_dimensions", "item_knowledge", "knowledge_text",
    "demand_text", "attribute_text", "item_texts", "run_makr",
]

logger = logging.getLogger(__name__)

STREAMS = ("demand", "attribute")
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
_PROMPT_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.txt$")


# =====================================================================================  prompts
def load_prompt(name: str) -> Tuple[str, str]:
    """``(template_text, version)`` of prompt ``name``.

    ``name`` is an agent name (``"l1_demand"``, ``"l1_attribute"``, ``"l2_refine"``,
    ``"l3_item"``; the highest ``.vN`` file wins) or a pinned version (``"l1_demand.v1"``). The
    version string, e.g. ``"l1_demand.v1"``, enters the cache key.
    """
    pinned = re.fullmatch(r"([a-z0-9_]+)\.v(\d+)", name)
    base = pinned.group(1) if pinned else name
    candidates = {}
    for path in PROMPTS_DIR.glob(f"{base}.v*.txt"):
        m = _PROMPT_FILE.match(path.name)
        if m and m.group("name") == base:
            candidates[int(m.group("version"))] = path
    if pinned:
        candidates = {v: p for v, p in candidates.items() if v == int(pinned.group(2))}
    if not candidates:
        known = sorted(p.name for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt template {name!r} in {PROMPTS_DIR} (files: "
                                f"{', '.join(known) or 'none'}). Fix: add {base}.v1.txt or use a "
                                f"known name.")
    version = max(candidates)
    return candidates[version].read_text(encoding="utf-8"), f"{base}.v{version}"


def render_prompt(name: str, **values: Any) -> Tuple[str, str]:
    """Render prompt ``name`` with ``string.Template`` ``$placeholders``; ``(prompt, version)``."""
    text, version = load_prompt(name)
    try:
        return string.Template(text).substitute({k: str(v) for k, v in values.items()}), version
    except KeyError as exc:
        raise ValueError(f"prompt {version}: placeholder ${exc.args[0]} has no value. Fix: pass "
                         f"{exc.args[0]}=... to render_prompt.") from None
    except ValueError as exc:
        raise ValueError(f"prompt {version}: invalid placeholder ({exc}). Fix: write a literal "
                         f"dollar sign as $$ in the template.") from None


# =====================================================================================  items
def validate_items(items: Sequence[Mapping[str, Any]]) -> None:
    """Check the item metadata format; raise ``ValueError`` naming the item, field and fix."""
    seen: Dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected a dict with item_id, title, categories, brand, "
                             f"price; got {type(item).__name__}")
        iid = item.get("item_id")
        if not isinstance(iid, str) or not iid:
            raise ValueError(f"{where}: field 'item_id' must be a non-empty str, got {iid!r}. "
                             f"Fix: convert ids with str().")
        where = f"items[{i}] (item_id={iid!r})"
        if iid in seen:
            raise ValueError(f"{where}: duplicate item_id (also items[{seen[iid]}]). Fix: "
                             f"de-duplicate the metadata.")
        seen[iid] = i
        if not isinstance(item.get("title"), str):
            raise ValueError(f"{where}: field 'title' must be a str, got "
                             f"{type(item.get('title')).__name__}. Fix: use '' for a missing title.")
        cats = item.get("categories")
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise ValueError(f"{where}: field 'categories' must be a list of str (the category "
                             f"path, root first), got {cats!r}")
        brand = item.get("brand")
        if brand is not None and not isinstance(brand, str):
            raise ValueError(f"{where}: field 'brand' must be a str or None, got {brand!r}")
        price = item.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float))):
            raise ValueError(f"{where}: field 'price' must be a number or None, got {price!r}. "
                             f"Fix: parse strings like '$12.99' to 12.99 first.")


def _levels(item: Mapping[str, Any]) -> List[str]:
    return [c for c in (clean_category(c) for c in item.get("categories") or []) if c]


def primary_category(item: Mapping[str, Any], level: int = 2) -> str:
    """Category name at 1-based ``level`` of the path (the deepest one if the path is shorter;
    ``"Unknown"`` without categories). Beauty: level 2, e.g. ``"Makeup"``."""
    if level < 1:
        raise ValueError(f"category_level must be >= 1 (1-based), got {level}")
    levels = _levels(item)
    return levels[min(level, len(levels)) - 1] if levels else "Unknown"


def subcategory_of(item: Mapping[str, Any], depth: int = 3) -> str:
    """Path prefix of ``depth`` levels joined by ``" > "`` (the full path if shorter)."""
    if depth < 1:
        raise ValueError(f"subcategory_depth must be >= 1, got {depth}")
    levels = _levels(item)
    return " > ".join(levels[:depth]) if levels else "Unknown"


def group_by_category(items: Sequence[Mapping[str, Any]], level: int = 2
                      ) -> Dict[str, List[Mapping[str, Any]]]:
    """Primary category -> items sorted by ``item_id``; keys sorted."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for item in sorted(items, key=lambda it: it["item_id"]):
        groups.setdefault(primary_category(item, level), []).append(item)
    return dict(sorted(groups.items()))


def group_by_subcategory(items: Sequence[Mapping[str, Any]], depth: int = 3
                         ) -> Dict[str, List[Mapping[str, Any]]]:
    """Subcategory -> items sorted by ``item_id``; keys sorted."""
    groups: Dict[str, List[Mapping[str, Any]]] = {}
    for item in sorted(items, key=lambda it: it["item_id"]):
        groups.setdefault(subcategory_of(item, depth), []).append(item)
    return dict(sorted(groups.items()))


def representative_sample(items: Sequence[Mapping[str, Any]], k: int) -> List[Mapping[str, Any]]:
    """The ``k`` items with the smallest sha256(item_id), in that order (deterministic)."""
    ranked = sorted(items, key=lambda it: (hashlib.sha256(str(it["item_id"]).encode("utf-8"))
                                           .hexdigest(), it["item_id"]))
    return list(ranked[:max(0, int(k))])


def _prompt_item(item: Mapping[str, Any]) -> str:
    price = item.get("price")
    return json.dumps({"item_id": item["item_id"], "title": clean_text(item.get("title")),
                       "categories": _levels(item), "brand": clean_text(item.get("brand")) or None,
                       "price": price}, ensure_ascii=False)


def _items_block(items: Sequence[Mapping[str, Any]]) -> str:
    return "\n".join(_prompt_item(it) for it in items)


# =====================================================================================  grounding
def normalize_for_grounding(text: Optional[str]) -> str:
    """HTML-unescape, NFKC, ``_`` -> space, lowercase, collapse whitespace, strip punctuation and
    symbols at both ends."""
    text = clean_text(text).replace("_", " ").lower()
    text = re.sub(r"\s+", " ", text).strip()
    start, end = 0, len(text)
    while start < end and (text[start].isspace() or unicodedata.category(text[start])[0] in "PS"):
        start += 1
    while end > start and (text[end - 1].isspace() or unicodedata.category(text[end - 1])[0] in "PS"):
        end -= 1
    return text[start:end]


@dataclass
class GroundingResult:
    """Outcome of :func:`grounding_check` on one L3 record.

    ``ungrounded`` lists ``(path, evidence)``, e.g. ``("$.knowledge[1].evidence[0]", "SPF 50")``.
    """

    total: int = 0
    grounded: int = 0
    ungrounded: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.ungrounded

    @property
    def rate(self) -> Optional[float]:
        return self.grounded / self.total if self.total else None

    def problems(self) -> List[str]:
        return [f"evidence {ev!r} at {path} is not a verbatim substring of the item metadata; "
                f"quote the metadata exactly or drop it" for path, ev in self.ungrounded]


def _grounded(evidence: Any, haystack: str) -> bool:
    if not isinstance(evidence, str):
        return False
    needle = normalize_for_grounding(evidence)
    return bool(needle) and needle in haystack


def grounding_check(item: Mapping[str, Any], record: Mapping[str, Any]) -> GroundingResult:
    """Check every evidence string of an L3 ``record`` against ``metadata_text(item)``, both
    normalised by :func:`normalize_for_grounding`."""
    haystack = normalize_for_grounding(metadata_text(item))
    result = GroundingResult()
    for i, entry in enumerate(record.get("knowledge") or []):
        for j, ev in enumerate(entry.get("evidence") or []):
            result.total += 1
            if _grounded(ev, haystack):
                result.grounded += 1
            else:
                result.ungrounded.append((f"$.knowledge[{i}].evidence[{j}]", ev))
    return result


def filter_grounded(item: Mapping[str, Any], record: Mapping[str, Any]
                    ) -> Tuple[Dict[str, Any], GroundingResult, int]:
    """``(record without ungrounded evidence, GroundingResult, entries dropped)``; an entry left
    without evidence is dropped."""
    result = grounding_check(item, record)
    haystack = normalize_for_grounding(metadata_text(item))
    out = copy.deepcopy(dict(record))
    kept, dropped = [], 0
    for entry in out.get("knowledge") or []:
        entry["evidence"] = [ev for ev in entry.get("evidence") or [] if _grounded(ev, haystack)]
        if entry["evidence"]:
            kept.append(entry)
        else:
            dropped += 1
    out["knowledge"] = kept
    return out, result, dropped


# =====================================================================================  layer 1
def _name_key(name: str) -> str:
    return re.sub(r"\s+", " ", clean_text(name).lower()).strip()


def merge_dimensions(previous: Sequence[Mapping[str, Any]], answer: Sequence[Mapping[str, Any]]
                     ) -> List[Dict[str, Any]]:
    """Union of two L1 dimension lists: same-named dimensions (case/space-insensitive) are merged
    (expressions appended without case-insensitive duplicates), the rest appended in order."""
    out: List[Dict[str, Any]] = []
    index: Dict[str, int] = {}
    for dim in list(previous) + list(answer):
        key = _name_key(dim["name"])
        if key not in index:
            index[key] = len(out)
            out.append({"name": dim["name"], "description": dim["description"],
                        "expressions": []})
        target = out[index[key]]["expressions"]
        known = {e.lower() for e in target}
        for e in dim["expressions"]:
            if e.lower() not in known:
                target.append(e)
                known.add(e.lower())
    return out


def build_taxonomy(items: Sequence[Mapping[str, Any]], backend: LLMBackend, *,
                   category_level: int = 2, batch_size: int = 40
                   ) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Layer 1: ``{primary category: {"demand": L1, "attribute": L1}}``.

    Items of each category are read in ``item_id`` order, ``batch_size`` at a time; each batch
    is one request per stream carrying the current dimensions. Requests of different categories
    and streams run concurrently; batches of one (category, stream) run in order.
    """
    validate_items(items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups = group_by_category(items, category_level)
    state: Dict[str, Dict[str, List[Dict[str, Any]]]] = {c: {s: [] for s in STREAMS} for c in groups}
    batches = {c: [g[i:i + batch_size] for i in range(0, len(g), batch_size)]
               for c, g in groups.items()}
    for step in range(max((len(b) for b in batches.values()), default=0)):
        requests, targets = [], []
        for cat, cat_batches in batches.items():
            if step >= len(cat_batches):
                continue
            for stream in STREAMS:
                agent = f"l1_{stream}"
                prompt, version = render_prompt(
                    agent, category=cat, batch_index=step + 1, batch_count=len(cat_batches),
                    dimensions_json=json.dumps(state[cat][stream], ensure_ascii=False, indent=1),
                    items_json=_items_block(cat_batches[step]), schema=schema_json("L1"))
                requests.append(LLMRequest(
                    f"L1 {stream} category={cat!r} batch={step + 1}/{len(cat_batches)}", agent,
                    "L1", prompt, version,
                    context={"category": cat, "items": list(cat_batches[step]),
                             "dimensions": copy.deepcopy(state[cat][stream])}))
                targets.append((cat, stream))
        for (cat, stream), record in zip(targets, backend.map(requests)):
            state[cat][stream] = merge_dimensions(state[cat][stream], record["answer"]["dimensions"])
    return {cat: {s: {"category": cat, "stream": s, "dimensions": state[cat][s]} for s in STREAMS}
            for cat in groups}


# =====================================================================================  layer 2
def _l2_check(l1_names: Sequence[str]):
    known = {_name_key(n) for n in l1_names}

    def check(answer: Dict[str, Any]) -> List[str]:
        return [f"dimension {d['name']!r} is marked 'inherited' but the Layer 1 list has no "
                f"dimension of that name; keep the Layer 1 name or mark it 'new'"
                for d in answer["dimensions"]
                if d["origin"] == "inherited" and _name_key(d["name"]) not in known]
    return check


def refine_dimensions(taxonomy: Mapping[str, Mapping[str, Mapping[str, Any]]],
                      items_by_subcategory: Mapping[str, Sequence[Mapping[str, Any]]],
                      backend: LLMBackend, sample_size: int = 20, *, category_level: int = 2
                      ) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Layer 2: ``{subcategory: {"demand": L2, "attribute": L2}}``.

    Each subcategory inherits the Layer 1 dimensions of its primary category (that of its first
    item) and is refined on :func:`representative_sample` of ``sample_size`` items.
    """
    requests, targets = [], []
    for sub in sorted(items_by_subcategory):
        members = list(items_by_subcategory[sub])
        if not members:
            continue
        cat = primary_category(members[0], category_level)
        if cat not in taxonomy:
            raise KeyError(f"subcategory {sub!r} belongs to primary category {cat!r}, which the "
                           f"taxonomy lacks (has: {', '.join(sorted(taxonomy)) or 'none'}). Fix: "
                           f"build the taxonomy on the same items and category_level.")
        sample = representative_sample(members, sample_size)
        for stream in STREAMS:
            dims = taxonomy[cat][stream]["dimensions"]
            prompt, version = render_prompt(
                "l2_refine", subcategory=sub, category=cat, stream=stream,
                sample_size=len(sample), subcategory_size=len(members),
                dimensions_json=json.dumps(dims, ensure_ascii=False, indent=1),
                items_json=_items_block(sample), schema=schema_json("L2"))
            requests.append(LLMRequest(
                f"L2 {stream} subcategory={sub!r}", "l2_refine", "L2", prompt, version,
                context={"subcategory": sub, "category": cat, "stream": stream,
                         "dimensions": copy.deepcopy(dims), "items": sample,
                         "subcategory_size": len(members)},
                check=_l2_check([d["name"] for d in dims])))
            targets.append((sub, stream))
    refined: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for (sub, stream), record in zip(targets, backend.map(requests)):
        answer = copy.deepcopy(record["answer"])
        answer["subcategory"] = sub
        refined.setdefault(sub, {})[stream] = answer
    return refined


# =====================================================================================  layer 3
def _dims_block(dims: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps([{"name": d["name"], "attributes": d.get("attributes", []),
                        "expressions": d.get("expressions", [])} for d in dims],
                      ensure_ascii=False, indent=1)


def _l3_check(item: Mapping[str, Any], names: Mapping[str, set]):
    def check(answer: Dict[str, Any]) -> List[str]:
        problems = grounding_check(item, answer).problems()
        for i, e in enumerate(answer["knowledge"]):
            if _name_key(e["dimension"]) not in names[e["perspective"]]:
                problems.append(f"$.knowledge[{i}].dimension {e['dimension']!r} is not a "
                                f"{e['perspective']} dimension listed above; use a listed name")
        return problems
    return check


def item_knowledge(items: Sequence[Mapping[str, Any]],
                   refined: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   backend: LLMBackend, *, subcategory_depth: int = 3
                   ) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Layer 3: ``(records, stats)``; one L3 record per item, in ``item_id`` order.

    Records keep only grounded evidence and entries naming a refined dimension. ``stats``:
    ``items``, ``evidence_total``, ``evidence_grounded``, ``evidence_rejected``,
    ``grounding_rate`` (grounded / total over the accepted answers, None without evidence),
    ``entries_total``, ``entries_kept``, ``entries_dropped_ungrounded``,
    ``entries_dropped_unknown_dimension``, ``items_without_knowledge``.
    """
    validate_items(items)
    ordered = sorted(items, key=lambda it: it["item_id"])
    requests, dim_names = [], []
    for item in ordered:
        sub = subcategory_of(item, subcategory_depth)
        if sub not in refined:
            raise KeyError(f"item {item['item_id']!r}: subcategory {sub!r} has no refined "
                           f"dimensions. Fix: run refine_dimensions on these items with the same "
                           f"subcategory_depth ({subcategory_depth}).")
        demand, attribute = refined[sub]["demand"]["dimensions"], refined[sub]["attribute"]["dimensions"]
        names = {"demand": {_name_key(d["name"]) for d in demand},
                 "attribute": {_name_key(d["name"]) for d in attribute}}
        prompt, version = render_prompt(
            "l3_item", item_id=item["item_id"], subcategory=sub, metadata_text=metadata_text(item),
            demand_dimensions=_dims_block(demand), attribute_dimensions=_dims_block(attribute),
            schema=schema_json("L3"))
        requests.append(LLMRequest(
            f"L3 item={item['item_id']!r}", "l3_item", "L3", prompt, version,
            context={"item": item, "demand_dimensions": copy.deepcopy(demand),
                     "attribute_dimensions": copy.deepcopy(attribute)},
            check=_l3_check(item, names)))
        dim_names.append(names)
    stats = {"items": len(ordered), "evidence_total": 0, "evidence_grounded": 0,
             "evidence_rejected": 0, "grounding_rate": None, "entries_total": 0,
             "entries_kept": 0, "entries_dropped_ungrounded": 0,
             "entries_dropped_unknown_dimension": 0, "items_without_knowledge": 0}
    records = []
    for item, names, record in zip(ordered, dim_names, backend.map(requests)):
        answer = copy.deepcopy(record["answer"])
        answer["item_id"] = item["item_id"]
        stats["entries_total"] += len(answer["knowledge"])
        known = [e for e in answer["knowledge"] if _name_key(e["dimension"]) in names[e["perspective"]]]
        stats["entries_dropped_unknown_dimension"] += len(answer["knowledge"]) - len(known)
        answer["knowledge"] = known
        clean, result, dropped = filter_grounded(item, answer)
        stats["evidence_total"] += result.total
        stats["evidence_grounded"] += result.grounded
        stats["evidence_rejected"] += result.total - result.grounded
        stats["entries_dropped_ungrounded"] += dropped
        stats["entries_kept"] += len(clean["knowledge"])
        stats["items_without_knowledge"] += 0 if clean["knowledge"] else 1
        if result.ungrounded:
            logger.info("L3 item %r: dropped %d ungrounded evidence string(s)", item["item_id"],
                        len(result.ungrounded))
        records.append(clean)
    if stats["evidence_total"]:
        stats["grounding_rate"] = stats["evidence_grounded"] / stats["evidence_total"]
    return records, stats


# =====================================================================================  texts
def knowledge_text(record: Mapping[str, Any], perspective: str) -> str:
    """``"dim: kw1, kw2; dim2: kw3"`` over the entries of ``perspective``, in record order."""
    if perspective not in STREAMS:
        raise ValueError(f"perspective must be 'demand' or 'attribute', got {perspective!r}")
    return "; ".join(f"{e['dimension']}: {', '.join(e['keywords'])}"
                     for e in record.get("knowledge") or [] if e["perspective"] == perspective)


def demand_text(record: Mapping[str, Any]) -> str:
    """User-demand-perspective text of one L3 record."""
    return knowledge_text(record, "demand")


def attribute_text(record: Mapping[str, Any]) -> str:
    """Item-attribute-perspective text of one L3 record."""
    return knowledge_text(record, "attribute")


def item_texts(records: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, str]]:
    """``{item_id: {"demand": text, "attribute": text}}``."""
    return {r["item_id"]: {"demand": demand_text(r), "attribute": attribute_text(r)}
            for r in records}


# =====================================================================================  pipeline
def run_makr(items: Sequence[Mapping[str, Any]], backend: LLMBackend, *, category_level: int = 2,
             subcategory_depth: int = 3, batch_size: int = 40, sample_size: int = 20
             ) -> Dict[str, Any]:
    """All three layers. Returns ``{"taxonomy", "refined", "knowledge", "texts", "stats",
    "provenance", "usage"}``; ``provenance`` names the backend, model and prompt versions."""
    if subcategory_depth < category_level:
        raise ValueError(f"subcategory_depth ({subcategory_depth}) must be >= category_level "
                         f"({category_level}) so that each subcategory has one primary category")
    validate_items(items)
    taxonomy = build_taxonomy(items, backend, category_level=category_level, batch_size=batch_size)
    refined = refine_dimensions(taxonomy, group_by_subcategory(items, subcategory_depth), backend,
                                sample_size, category_level=category_level)
    records, stats = item_knowledge(items, refined, backend, subcategory_depth=subcategory_depth)
    stats = dict(stats, categories=len(taxonomy), subcategories=len(refined))
    return {
        "taxonomy": taxonomy, "refined": refined, "knowledge": records,
        "texts": item_texts(records), "stats": stats,
        "provenance": {"backend": backend.name, "model": backend.model,
                       "prompts": {n: load_prompt(n)[1] for n in
                                   ("l1_demand", "l1_attribute", "l2_refine", "l3_item")},
                       "config": {"category_level": category_level,
                                  "subcategory_depth": subcategory_depth,
                                  "batch_size": batch_size, "sample_size": sample_size}},
        "usage": backend.usage(),
    }
