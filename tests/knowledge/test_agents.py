"""Tests of the MAKR agent layers (recbole_reaseq/knowledge/agents.py) on hand-made items, with
expected values computed by hand from the offline rules (backends.py lexicons and patterns)."""
from __future__ import annotations

import copy
import json

import pytest

from recbole_reaseq.knowledge import agents
from recbole_reaseq.knowledge.agents import (attribute_text, build_taxonomy, demand_text,
                                             filter_grounded, grounding_check, group_by_subcategory,
                                             item_knowledge, load_prompt, normalize_for_grounding,
                                             primary_category, refine_dimensions,
                                             render_prompt, representative_sample, run_makr,
                                             subcategory_of, validate_items)
from recbole_reaseq.knowledge.backends import (LLMBackend, OfflineBackend, OpenAIBackend,
                                               extract_facets, metadata_text, price_band)
from recbole_reaseq.knowledge.schemas import SchemaError, validate

from .fake_llm_server import answer, fake_llm  # noqa: F401  (fixture)

ITEMS = [
    {"item_id": "B005", "title": "Maybelline Fit Me Matte + Poreless Liquid Foundation, Natural "
     "Beige, 1 fl oz", "categories": ["Beauty", "Makeup", "Face"],
     "brand": "Maybelline New York", "price": 8.99},
    {"item_id": "B001", "title": "L&apos;Oreal Paris Voluminous Waterproof Mascara, Blackest Black,"
     " 0.28 fl oz", "categories": ["Beauty", "Makeup", "Eyes", "Mascara"],
     "brand": "L'Oreal Paris", "price": 7.49},
    {"item_id": "B002", "title": "Olay Regenerist Anti-Aging Moisturizing Cream for Women, 1.7 oz",
     "categories": ["Beauty", "Skin_Care", "Face"], "brand": "Olay", "price": 24.99},
    {"item_id": "B003", "title": "Neutrogena Hydro Boost Water Gel Face Moisturizer for Dry Skin, "
     "Oil-Free, 3 Pack", "categories": ["Beauty", "Skin_Care", "Face"], "brand": "Neutrogena",
     "price": 45.0},
    {"item_id": "B004", "title": "Bath &amp; Body Works Lavender Shower Gel 10 fl. oz",
     "categories": ["Beauty", "Bath_&_Body"], "brand": None, "price": None},
]
BY_ID = {it["item_id"]: it for it in ITEMS}


def dims(obj):
    return [(d["name"], d["expressions"]) for d in obj["dimensions"]]


# ------------------------------------------------------------------------------ metadata, facets
def test_metadata_text_and_category_helpers():
    assert metadata_text(BY_ID["B004"]) == ("title: Bath & Body Works Lavender Shower Gel 10 fl. oz\n"
                                           "categories: Beauty > Bath & Body")
    assert metadata_text(BY_ID["B002"]).splitlines()[1:] == [
        "categories: Beauty > Skin Care > Face", "brand: Olay", "price: $24.99"]
    assert [primary_category(it) for it in ITEMS] == ["Makeup", "Makeup", "Skin Care", "Skin Care",
                                                      "Bath & Body"]
    assert primary_category({"categories": []}) == "Unknown"
    assert primary_category(BY_ID["B004"], level=3) == "Bath & Body"  # shorter path: deepest
    assert subcategory_of(BY_ID["B001"]) == "Beauty > Makeup > Eyes"
    assert subcategory_of(BY_ID["B001"], depth=4) == "Beauty > Makeup > Eyes > Mascara"
    assert list(group_by_subcategory(ITEMS)) == ["Beauty > Bath & Body", "Beauty > Makeup > Eyes",
                                                 "Beauty > Makeup > Face", "Beauty > Skin Care > Face"]
    assert [price_band(p) for p in (None, 0, 9.99, 10, 29.99, 30, 60, 60.01, float("nan"))] == [
        "unknown", "unknown", "budget", "mid", "mid", "premium", "premium", "luxury", "unknown"]
    # smallest sha256(item_id) first: B003 (1e1f...), B001 (478c...), B005 (4f7b...)
    assert [it["item_id"] for it in representative_sample(ITEMS, 3)] == ["B003", "B001", "B005"]


def test_extract_facets_of_one_item_by_hand():
    got = [(f.stream, f.label, f.keyword, f.evidence) for f in extract_facets(BY_ID["B003"])]
    assert got == [
        ("demand", "need", "oil-free", "Oil-Free"),
        ("demand", "target", "dry skin", "Dry Skin"),
        ("demand", "category need", "face", "Face"),
        ("demand", "category need", "moisturizer", "Moisturizer"),
        ("attribute", "brand", "neutrogena", "Neutrogena"),
        ("attribute", "form", "gel", "Gel"),          # "Oil" of "Oil-Free" is not a form
        ("attribute", "pack", "3 pack", "3 Pack"),
        ("attribute", "price band", "premium", "$45.00"),
        ("attribute", "category", "skin care", "Skin Care > Face"),
        ("attribute", "category", "face", "Skin Care > Face"),
    ]
    sizes = {f.keyword: f.evidence for f in extract_facets(
        {"item_id": "s", "title": "Duo 8-Ounce, 50ml, 1.70 Fl. Oz, Twin Pack, pack of 6, SPF 30",
         "categories": [], "brand": None, "price": None}) if f.label in ("size", "pack", "need")}
    assert sizes == {"8 oz": "8-Ounce", "50 ml": "50ml", "1.7 fl oz": "1.70 Fl. Oz",
                     "2 pack": "Twin Pack", "6 pack": "pack of 6", "spf 30": "SPF 30"}


def test_offline_merge_expression_uses_jaccard():
    backend = OfflineBackend()
    ds = [{"name": "Target", "description": "from an LLM", "expressions": ["women"]}]
    backend.merge_expression(ds, "target", "dry skin")        # J(target, Target) = 1 -> joins
    backend.merge_expression(ds, "size", "1.7 oz")            # no fit -> new dimension
    backend.merge_expression(ds, "size", "1.7 fl oz")         # J = 2/3 >= 0.6 -> duplicate
    backend.merge_expression(ds, "size", "8 oz")              # J = 1/3 -> new expression
    backend.merge_expression(ds, "price band", "mid")         # J(price band, size) = 0 -> new
    backend.merge_expression(ds, "category need", "face")     # J(category need, ...) < 0.6 -> new
    assert dims({"dimensions": ds}) == [("Target", ["women", "dry skin"]),
                                        ("size", ["1.7 oz", "8 oz"]), ("price band", ["mid"]),
                                        ("category need", ["face"])]


# ------------------------------------------------------------------------------ layers, offline
def test_layer1_taxonomy_by_hand():
    taxonomy = build_taxonomy(ITEMS, OfflineBackend(), batch_size=1)
    assert list(taxonomy) == ["Bath & Body", "Makeup", "Skin Care"]
    for cat in taxonomy.values():
        for obj in cat.values():
            validate("L1", obj)
    # Skin Care, batch 1 = B002, batch 2 = B003 (item_id order)
    assert dims(taxonomy["Skin Care"]["demand"]) == [
        ("need", ["anti-aging", "moisturizing", "oil-free"]),
        ("target", ["women", "dry skin"]),
        ("category need", ["face", "moisturizer"])]
    assert dims(taxonomy["Skin Care"]["attribute"]) == [
        ("brand", ["olay", "neutrogena"]), ("form", ["cream", "gel"]), ("size", ["1.7 oz"]),
        ("price band", ["mid", "premium"]), ("category", ["skin care", "face"]),
        ("pack", ["3 pack"])]
    # Makeup: B001 then B005; "1 fl oz" vs "0.28 fl oz" has J = 2/4 < 0.6, so both are kept
    assert dims(taxonomy["Makeup"]["demand"]) == [
        ("need", ["volumizing", "waterproof", "matte", "poreless"]),
        ("category need", ["mascara", "face", "foundation"])]
    assert dims(taxonomy["Makeup"]["attribute"]) == [
        ("brand", ["l'oreal paris", "maybelline new york"]), ("size", ["0.28 fl oz", "1 fl oz"]),
        ("price band", ["budget"]), ("colour", ["black", "beige"]),
        ("category", ["makeup", "eyes", "mascara", "face"]), ("form", ["liquid"])]
    # one batch of two gives the same dimensions
    assert build_taxonomy(ITEMS, OfflineBackend(), batch_size=40) == taxonomy


def test_layer2_inherits_and_adds_new_dimension_with_reasoning():
    backend = OfflineBackend()
    taxonomy = build_taxonomy(ITEMS, backend)
    partial = copy.deepcopy(taxonomy)
    partial["Skin Care"]["demand"]["dimensions"] = [
        d for d in partial["Skin Care"]["demand"]["dimensions"] if d["name"] != "target"]
    subs = {"Beauty > Skin Care > Face": [BY_ID["B002"], BY_ID["B003"]]}
    refined = refine_dimensions(partial, subs, backend, sample_size=5)
    obj = refined["Beauty > Skin Care > Face"]["demand"]
    validate("L2", obj)
    # sample order: B003 (sha 1e1f...) then B002 (556e...)
    assert obj["dimensions"] == [
        {"name": "need", "origin": "inherited",
         "justification": "Inherited from the L1 demand taxonomy of 'Skin Care'; observed in 2/2 "
                          "sampled items.",
         "attributes": ["oil-free", "anti-aging", "moisturizing"],
         "expressions": ["anti-aging", "moisturizing", "oil-free"]},
        {"name": "category need", "origin": "inherited",
         "justification": "Inherited from the L1 demand taxonomy of 'Skin Care'; observed in 2/2 "
                          "sampled items.",
         "attributes": ["face", "moisturizer"], "expressions": ["face", "moisturizer"]},
        {"name": "target", "origin": "new",
         "justification": "No L1 demand dimension covers 'target', yet it is observed in 2/2 "
                          "sampled items.",
         "attributes": ["dry skin", "women"], "expressions": ["dry skin", "women"]}]
    assert obj["reasoning"] == (
        "Sampled 2 of 2 items of 'Beauty > Skin Care > Face'. Kept all 2 L1 demand dimensions of "
        "'Skin Care' as inherited (they are orthogonal by construction: one facet family each). "
        "Observed in the sample: need, category need. Not observed (kept for completeness): none. "
        "New dimensions: target.")
    with pytest.raises(KeyError, match="primary category 'Skin Care', which the taxonomy lacks"):
        refine_dimensions({"Makeup": taxonomy["Makeup"]}, subs, backend)


def test_layer3_item_knowledge_by_hand():
    out = run_makr(ITEMS, OfflineBackend())
    record = next(r for r in out["knowledge"] if r["item_id"] == "B002")
    validate("L3", record)
    assert record == {"item_id": "B002", "knowledge": [
        {"perspective": "demand", "dimension": "need", "evidence": ["Anti-Aging", "Moisturizing"],
         "analysis": 'The metadata states "Anti-Aging", "Moisturizing", so the item serves '
                     'shoppers whose need is anti-aging, moisturizing.',
         "keywords": ["anti-aging", "moisturizing"]},
        {"perspective": "demand", "dimension": "target", "evidence": ["Women"],
         "analysis": 'The metadata states "Women", so the item serves shoppers whose target is '
                     'women.', "keywords": ["women"]},
        {"perspective": "demand", "dimension": "category need", "evidence": ["Face"],
         "analysis": 'The metadata states "Face", so the item serves shoppers whose category need '
                     'is face.', "keywords": ["face"]},
        {"perspective": "attribute", "dimension": "brand", "evidence": ["Olay"],
         "analysis": 'The metadata states "Olay", so the item\'s brand is olay.',
         "keywords": ["olay"]},
        {"perspective": "attribute", "dimension": "form", "evidence": ["Cream"],
         "analysis": 'The metadata states "Cream", so the item\'s form is cream.',
         "keywords": ["cream"]},
        {"perspective": "attribute", "dimension": "size", "evidence": ["1.7 oz"],
         "analysis": 'The metadata states "1.7 oz", so the item\'s size is 1.7 oz.',
         "keywords": ["1.7 oz"]},
        {"perspective": "attribute", "dimension": "price band", "evidence": ["$24.99"],
         "analysis": 'The metadata states "$24.99", so the item\'s price band is mid.',
         "keywords": ["mid"]},
        {"perspective": "attribute", "dimension": "category", "evidence": ["Skin Care > Face"],
         "analysis": 'The metadata states "Skin Care > Face", so the item\'s category is skin '
                     'care, face.', "keywords": ["skin care", "face"]}]}
    assert demand_text(record) == "need: anti-aging, moisturizing; target: women; category need: face"
    assert attribute_text(record) == ("brand: olay; form: cream; size: 1.7 oz; price band: mid; "
                                      "category: skin care, face")
    assert out["texts"]["B001"] == {
        "demand": "need: volumizing, waterproof; category need: mascara",
        "attribute": "brand: l'oreal paris; size: 0.28 fl oz; price band: budget; colour: black; "
                     "category: makeup, eyes, mascara"}
    assert out["texts"]["B004"] == {
        "demand": "occasion: shower; category need: bath & body, body wash",
        "attribute": "form: gel; size: 10 fl oz; scent: lavender; category: bath & body"}
    # every offline evidence string is grounded
    assert out["stats"]["grounding_rate"] == 1.0
    # B001: 8, B002: 9, B003: 9, B004: 7, B005: 10 evidence strings
    assert out["stats"]["evidence_total"] == out["stats"]["evidence_grounded"] == 43
    assert (out["stats"]["items"], out["stats"]["categories"], out["stats"]["subcategories"]) == \
        (5, 3, 4)
    assert out["provenance"]["backend"] == "offline"
    assert out["provenance"]["prompts"] == {"l1_demand": "l1_demand.v1",
                                            "l1_attribute": "l1_attribute.v1",
                                            "l2_refine": "l2_refine.v1", "l3_item": "l3_item.v1"}
    for sub in out["refined"].values():
        for obj in sub.values():
            validate("L2", obj)


def test_pipeline_is_deterministic_byte_for_byte(tmp_path):
    dumps = []
    for run in ("a", "b"):
        with OfflineBackend(cache=tmp_path / f"{run}.jsonl") as backend:
            out = run_makr(list(reversed(ITEMS)) if run == "b" else ITEMS, backend, batch_size=2,
                           sample_size=1)
        dumps.append(json.dumps(out, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    assert dumps[0] == dumps[1]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # rerun: all 19 requests (L1: 3 categories x 2 streams, L2: 4 subcategories x 2, L3: 5 items)
    # are cache hits
    with OfflineBackend(cache=tmp_path / "a.jsonl") as cached:
        out = run_makr(ITEMS, cached, batch_size=2, sample_size=1)
        assert cached.usage()["requests"] == 0 and cached.usage()["cache_hits"] == 19
    assert json.dumps(out["knowledge"], sort_keys=True).encode() in dumps[0]


# ------------------------------------------------------------------------------ grounding
def test_grounding_normalisation():
    assert normalize_for_grounding("  Bath &amp; Body_Works,  ") == "bath & body works"
    assert normalize_for_grounding("\u201cLavender\u201d!") == "lavender"
    assert normalize_for_grounding("$24.99") == "24.99"
    assert normalize_for_grounding("...") == ""


def test_grounding_check_true_and_false_cases():
    item = BY_ID["B004"]
    evidence = ["Bath & Body Works",          # title, after unescaping &amp;
                "bath &amp; body WORKS",      # entity + case in the evidence
                "BATH_&_BODY",                # category name with underscores
                "  Lavender Shower Gel, ",    # whitespace and punctuation at the ends
                "lavender body wash",         # paraphrase: not verbatim
                "10 fl oz",                   # metadata says "10 fl. oz"
                ""]
    record = {"item_id": "B004", "knowledge": [
        {"perspective": "attribute", "dimension": "scent", "evidence": evidence[:4],
         "analysis": "a", "keywords": ["lavender"]},
        {"perspective": "attribute", "dimension": "size", "evidence": evidence[4:],
         "analysis": "a", "keywords": ["10 fl oz"]}]}
    result = grounding_check(item, record)
    assert (result.total, result.grounded, result.ok) == (7, 4, False)
    assert result.rate == 4 / 7
    assert result.ungrounded == [("$.knowledge[1].evidence[0]", "lavender body wash"),
                                 ("$.knowledge[1].evidence[1]", "10 fl oz"),
                                 ("$.knowledge[1].evidence[2]", "")]
    assert grounding_check(BY_ID["B001"], {"knowledge": [
        {"evidence": ["$7.49", "L'Oreal Paris Voluminous", "l&#39;oreal paris"]}]}).ok
    assert not grounding_check(BY_ID["B001"], {"knowledge": [{"evidence": ["$7.50"]}]}).ok
    cleaned, res, dropped = filter_grounded(item, record)
    assert dropped == 1 and res.grounded == 4
    assert cleaned["knowledge"] == [record["knowledge"][0]]


class ScriptedBackend(LLMBackend):
    """Returns hand-made L3 answers (no re-ask), to test the agent's own grounding policy."""

    name, model = "scripted", "hand"

    def __init__(self, answers):
        super().__init__()
        self.answers = answers

    def _answer(self, request):
        return validate("L3", copy.deepcopy(self.answers[request.context["item"]["item_id"]]))


def test_ungrounded_evidence_is_rejected_and_grounding_rate_is_exact():
    refined = run_makr(ITEMS, OfflineBackend())["refined"]
    answers = {
        "B001": {"item_id": "B001", "knowledge": [
            {"perspective": "demand", "dimension": "need", "evidence": ["Waterproof", "smudge-proof"],
             "analysis": "a", "keywords": ["waterproof"]},
            {"perspective": "attribute", "dimension": "colour", "evidence": ["Blackest Black"],
             "analysis": "a", "keywords": ["black"]},
            {"perspective": "attribute", "dimension": "finish", "evidence": ["Waterproof"],
             "analysis": "a", "keywords": ["waterproof"]}]},
        "B002": {"item_id": "WRONG", "knowledge": [
            {"perspective": "demand", "dimension": "target", "evidence": ["for men"],
             "analysis": "a", "keywords": ["men"]},
            {"perspective": "attribute", "dimension": "Price  Band", "evidence": ["$24.99"],
             "analysis": "a", "keywords": ["mid"]}]},
    }
    records, stats = item_knowledge([BY_ID["B002"], BY_ID["B001"]], refined,
                                    ScriptedBackend(answers))
    assert stats == {"items": 2, "evidence_total": 5, "evidence_grounded": 3,
                     "evidence_rejected": 2, "grounding_rate": 0.6, "entries_total": 5,
                     "entries_kept": 3, "entries_dropped_ungrounded": 1,
                     "entries_dropped_unknown_dimension": 1, "items_without_knowledge": 0}
    assert [r["item_id"] for r in records] == ["B001", "B002"]
    assert records[0]["knowledge"][0]["evidence"] == ["Waterproof"]
    assert [e["dimension"] for e in records[0]["knowledge"]] == ["need", "colour"]
    assert records[1]["knowledge"] == [answers["B002"]["knowledge"][1]]
    assert demand_text(records[1]) == "" and attribute_text(records[1]) == "Price  Band: mid"


def test_openai_layer3_reasks_on_ungrounded_evidence(fake_llm):
    refined = run_makr(ITEMS, OfflineBackend())["refined"]
    bad = {"item_id": "B004", "knowledge": [
        {"perspective": "attribute", "dimension": "scent", "evidence": ["Lavender Oil"],
         "analysis": "Lavender scented.", "keywords": ["lavender"]}]}
    good = copy.deepcopy(bad)
    good["knowledge"][0]["evidence"] = ["Lavender"]
    fake_llm.enqueue(answer(bad), answer(good))
    backend = OpenAIBackend(fake_llm.base_url, "m", "sk-x-123456", timeout=5, max_reasks=1,
                            sleep=lambda s: None)
    records, stats = item_knowledge([BY_ID["B004"]], refined, backend)
    assert records == [good] and stats["grounding_rate"] == 1.0
    assert backend.usage()["reasks_check"] == 1
    prompt = fake_llm.requests[0].body["messages"][0]["content"]
    assert "<<<\ntitle: Bath & Body Works Lavender Shower Gel 10 fl. oz\ncategories: Beauty > " \
           "Bath & Body\n>>>" in prompt
    assert "Your previous answer was rejected: evidence 'Lavender Oil' at " \
           "$.knowledge[0].evidence[0] is not a verbatim substring of the item metadata" in \
           fake_llm.requests[1].body["messages"][2]["content"]
    # without re-asks left, the ungrounded answer is accepted by the backend and filtered here
    fake_llm.enqueue(answer(bad))
    no_reask = OpenAIBackend(fake_llm.base_url, "m", None, timeout=5, max_reasks=0)
    records, stats = item_knowledge([BY_ID["B004"]], refined, no_reask)
    assert records == [{"item_id": "B004", "knowledge": []}]
    assert (stats["evidence_rejected"], stats["grounding_rate"], stats["items_without_knowledge"]) \
        == (1, 0.0, 1)


# ------------------------------------------------------------------------------ schemas, prompts, inputs
def test_schema_rejection_names_the_field():
    obj = {"subcategory": "Face", "reasoning": "r", "dimensions": [
        {"name": "need", "origin": "borrowed", "justification": "j", "attributes": [],
         "expressions": ["x"]}]}
    with pytest.raises(SchemaError) as err:
        validate("L2", obj)
    assert err.value.path == "$.dimensions[0].origin"
    assert str(err.value).startswith(
        "L2 answer does not match the schema at $.dimensions[0].origin: 'borrowed' is not one of "
        "['inherited', 'new'] (expected one of \"inherited\", \"new\")")
    with pytest.raises(SchemaError, match=r"at \$\.knowledge\[0\]: 'keywords' is a required "
                                          r"property \(expected an object with the fields"):
        validate("L3", {"item_id": "x", "knowledge": [
            {"perspective": "demand", "dimension": "d", "evidence": ["e"], "analysis": "a"}]})
    with pytest.raises(SchemaError, match=r"\$\.dimensions\[0\]\.expressions: \[\] should be "
                                          r"non-empty \(expected a list of at least 1"):
        validate("L1", {"category": "c", "stream": "demand", "dimensions": [
            {"name": "n", "description": "d", "expressions": []}]})
    with pytest.raises(SchemaError, match=r"at \$: Additional properties are not allowed"):
        validate("L3", {"item_id": "x", "knowledge": [], "extra": 1})
    assert isinstance(SchemaError("m", "L1", "$", []), ValueError)


def test_prompts_are_versioned_templates_with_the_rules():
    text, version = load_prompt("l1_demand")
    assert version == "l1_demand.v1" and load_prompt("l1_demand.v1") == (text, version)
    for placeholder in ("$category", "$dimensions_json", "$items_json", "$schema"):
        assert placeholder in text
    assert "MERGE" in text and "NEW dimension only when no existing dimension fits" in text
    l2, _ = load_prompt("l2_refine")
    assert all(w in l2 for w in ("ORTHOGONAL", "COMPREHENSIVE", "OBJECTIVE", '"inherited"',
                                 '"new"', '"reasoning"', '"attributes"', '"expressions"'))
    assert "QUOTED VERBATIM" in load_prompt("l3_item")[0]
    with pytest.raises(ValueError, match=r"placeholder \$metadata_text has no value"):
        render_prompt("l3_item", item_id="x", subcategory="s", demand_dimensions="[]",
                      attribute_dimensions="[]", schema="{}")
    with pytest.raises(FileNotFoundError, match="no prompt template 'l9_nothing'"):
        load_prompt("l9_nothing")


def test_validate_items_names_item_and_field():
    with pytest.raises(ValueError, match=r"items\[0\] \(item_id='A'\): field 'price' must be a "
                                         r"number or None, got '\$12.99'"):
        validate_items([{"item_id": "A", "title": "t", "categories": [], "brand": None,
                         "price": "$12.99"}])
    with pytest.raises(ValueError, match=r"items\[1\] \(item_id='A'\): duplicate item_id"):
        validate_items([dict(ITEMS[0], item_id="A"), dict(ITEMS[1], item_id="A")])
    with pytest.raises(ValueError, match=r"subcategory_depth \(1\) must be >= category_level"):
        run_makr(ITEMS, OfflineBackend(), subcategory_depth=1)
    assert agents.STREAMS == ("demand", "attribute")
