"""Tests of the OpenAI-compatible backend against a real local HTTP server (fake_llm_server.py),
and of the offline backend's request interface."""
from __future__ import annotations

import copy
import json
import logging
import re
import traceback

import pytest

from recbole_reaseq.knowledge.backends import (LLMConfigError, LLMRequest, LLMRequestError,
                                               OfflineBackend, OpenAIBackend, parse_json_answer,
                                               parse_retry_after)
from recbole_reaseq.knowledge.cache import AnswerCache, cache_key

from .fake_llm_server import answer, fake_llm, hang, http_error, raw  # noqa: F401  (fixture)

KEY = "sk-test-S3CRET-0123456789"
VALID = {"category": "Makeup", "stream": "demand",
         "dimensions": [{"name": "need", "description": "What the shopper wants.",
                         "expressions": ["waterproof", "volumizing"]}]}
BAD_SCHEMA = dict(copy.deepcopy(VALID), stream="price")


def make(server, sleeps=None, **kw):
    args = dict(base_url=server.base_url, model="test-model", api_key=KEY, timeout=0.5,
                max_retries=3, max_reasks=2, backoff_base=0.01, jitter=0.0,
                sleep=(sleeps.append if sleeps is not None else (lambda s: None)))
    args.update(kw)
    return OpenAIBackend(**args)


def req(prompt="Build the taxonomy.", request_id="L1 test", check=None, version="l1_demand.v1"):
    return LLMRequest(request_id, "l1_demand", "L1", prompt, version, check=check)


def assert_no_key(*texts):
    for text in texts:
        assert KEY not in text


def test_success_sends_openai_request_and_counts_usage(fake_llm):
    fake_llm.enqueue(answer(VALID, prompt_tokens=21, completion_tokens=8))
    backend = make(fake_llm, temperature=0.0)
    record = backend.complete_json("l1_demand", "Build the taxonomy.", "L1",
                                   prompt_version="l1_demand.v1", request_id="L1 makeup")
    assert record["answer"] == VALID
    assert {k: record[k] for k in ("request_id", "agent", "schema_layer", "backend", "model",
                                   "prompt_version", "cached")} == {
        "request_id": "L1 makeup", "agent": "l1_demand", "schema_layer": "L1",
        "backend": "openai", "model": "test-model", "prompt_version": "l1_demand.v1",
        "cached": False}
    assert record["key"] == cache_key("openai", "test-model", "l1_demand.v1", "Build the taxonomy.")
    (sent,) = fake_llm.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {"model": "test-model", "temperature": 0.0,
                         "response_format": {"type": "json_object"},
                         "messages": [{"role": "user", "content": "Build the taxonomy."}]}
    assert backend.usage() == {"requests": 1, "http_requests": 1, "retries": 0, "reasks": 0,
                               "reasks_invalid_json": 0, "reasks_schema": 0, "reasks_check": 0,
                               "failures": 0, "cache_hits": 0, "prompt_tokens": 21,
                               "completion_tokens": 8, "total_tokens": 29}


def test_retries_on_500_429_and_timeout_with_backoff_and_retry_after(fake_llm, caplog):
    fake_llm.enqueue(http_error(500), http_error(429, retry_after="2"), hang(3.0),
                     answer(VALID, prompt_tokens=11, completion_tokens=7))
    sleeps = []
    backend = make(fake_llm, sleeps)
    with caplog.at_level(logging.DEBUG):
        record = backend.complete(req())
    assert record["answer"] == VALID
    assert len(fake_llm.requests) == 4
    # retry 0: 0.01 * 2**0; retry 1: Retry-After wins; retry 2: 0.01 * 2**2 (jitter 0)
    assert sleeps == [0.01, 2.0, 0.04]
    usage = backend.usage()
    assert (usage["requests"], usage["http_requests"], usage["retries"], usage["failures"]) == \
        (1, 4, 3, 0)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (11, 7, 18)
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("backends")]
    assert len(messages) == 3
    assert "HTTP 500" in messages[0] and "retry 1/3" in messages[0]
    assert "HTTP 429" in messages[1] and "retry 2/3 in 2.000s" in messages[1]
    assert "timeout after 0.5s" in messages[2]
    assert_no_key(caplog.text)


def test_jitter_is_seeded_and_bounded(fake_llm):
    fake_llm.enqueue(http_error(503), http_error(502), answer(VALID))
    sleeps = []
    make(fake_llm, sleeps, jitter=0.5, seed=7).complete(req())
    assert len(sleeps) == 2
    assert 0.01 <= sleeps[0] < 0.015 and 0.02 <= sleeps[1] < 0.03
    fake_llm.enqueue(http_error(503), http_error(502), answer(VALID))
    again = []
    make(fake_llm, again, jitter=0.5, seed=7).complete(req())
    assert again == sleeps


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_reask_on_malformed_then_schema_violating_answer(fake_llm):
    fake_llm.enqueue(raw("{not json", prompt_tokens=8, completion_tokens=2),
                     answer(BAD_SCHEMA, prompt_tokens=9, completion_tokens=3),
                     answer(VALID, prompt_tokens=12, completion_tokens=4))
    backend = make(fake_llm)
    record = backend.complete(req("P0"))
    assert record["answer"] == VALID
    usage = backend.usage()
    assert (usage["reasks"], usage["reasks_invalid_json"], usage["reasks_schema"],
            usage["retries"], usage["http_requests"]) == (2, 1, 1, 0, 3)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (29, 9, 38)
    conversations = [r.body["messages"] for r in fake_llm.requests]
    assert [len(m) for m in conversations] == [1, 3, 5]
    last = conversations[2]
    assert last[0] == {"role": "user", "content": "P0"}
    assert last[1] == {"role": "assistant", "content": "{not json"}
    assert last[2]["role"] == "user" and last[2]["content"].startswith(
        "Your previous answer was rejected: the reply is not valid JSON (Expecting property name "
        "enclosed in double quotes at line 1 column 2)")
    assert last[3] == {"role": "assistant", "content": json.dumps(BAD_SCHEMA)}
    assert "L1 answer does not match the schema at $.stream: 'price' is not one of " \
           "['demand', 'attribute']" in last[4]["content"]


def test_soft_check_reasks_then_accepts(fake_llm):
    second = copy.deepcopy(VALID)
    second["dimensions"][0]["expressions"] = ["waterproof"]
    fake_llm.enqueue(answer(VALID), answer(second))
    seen = []

    def check(obj):
        seen.append(obj)
        return ["expression 'volumizing' is not grounded"] if "volumizing" in \
            obj["dimensions"][0]["expressions"] else []

    backend = make(fake_llm)
    assert backend.complete(req(check=check))["answer"] == second
    assert backend.usage()["reasks_check"] == 1 and len(seen) == 2
    assert "expression 'volumizing' is not grounded" in \
        fake_llm.requests[1].body["messages"][2]["content"]
    # a soft check that never passes: the last answer is kept, no failure
    fake_llm.enqueue(answer(VALID), answer(VALID))
    strict = make(fake_llm, max_reasks=1)
    assert strict.complete(req("P2", check=lambda o: ["always wrong"]))["answer"] == VALID
    assert (strict.usage()["reasks"], strict.usage()["failures"]) == (1, 0)


def test_final_failure_after_retry_budget_names_request_and_cause(fake_llm, caplog):
    fake_llm.enqueue(*[http_error(500, body="upstream exploded")] * 4)
    sleeps = []
    backend = make(fake_llm, sleeps)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LLMRequestError) as err:
            backend.complete(req(request_id="L3 item='B001'"))
    message = str(err.value)
    assert message.startswith("LLM request \"L3 item='B001'\" failed after 4 attempt(s) "
                              "(3 retries); last cause: HTTP 500 Internal Server Error: "
                              "upstream exploded")
    assert err.value.request_id == "L3 item='B001'"
    assert sleeps == [0.01, 0.02, 0.04] and len(fake_llm.requests) == 4
    assert backend.usage()["failures"] == 1 and backend.usage()["retries"] == 3
    assert_no_key(message, repr(err.value), "".join(traceback.format_exception(err.value)),
                  caplog.text)


def test_final_failure_after_reask_budget(fake_llm):
    fake_llm.enqueue(raw("nope"), raw("still nope"), answer({"category": "x"}))
    backend = make(fake_llm)
    with pytest.raises(LLMRequestError, match=re.escape(
            "LLM request 'L1 test': the answer is still invalid after 2 re-ask(s); last cause: "
            "L1 answer does not match the schema at $: 'dimensions' is a required property")):
        backend.complete(req())
    assert backend.usage()["reasks"] == 2 and backend.usage()["failures"] == 1


def test_non_retryable_error_fails_at_once_and_redacts_an_echoed_key(fake_llm, caplog):
    fake_llm.enqueue(http_error(401, body=f'{{"error": "invalid key {KEY}"}}'))
    backend = make(fake_llm)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LLMRequestError) as err:
            backend.complete(req())
    assert "failed (not retryable): HTTP 401 Unauthorized" in str(err.value)
    assert "invalid key [REDACTED]" in str(err.value)
    assert backend.usage()["http_requests"] == 1 and backend.usage()["retries"] == 0
    assert_no_key(str(err.value), err.value.cause, "".join(traceback.format_exception(err.value)),
                  caplog.text, repr(backend), json.dumps(backend.describe()),
                  json.dumps(backend.usage()))
    assert "api_key='set'" not in repr(backend) and "api_key=set" in repr(backend)


def test_connection_refused_is_retried_then_fails(fake_llm):
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", KEY, timeout=0.5, max_retries=2,
                            backoff_base=0.0, jitter=0.0, sleep=lambda s: None)
    with pytest.raises(LLMRequestError, match=r"failed after 3 attempt\(s\) \(2 retries\); "
                                              r"last cause: connection error"):
        backend.complete(req())
    assert backend.usage()["retries"] == 2


def test_concurrency_bound_is_respected_and_order_kept(fake_llm):
    def responder(body):
        n = int(body["messages"][0]["content"].split("#")[1])
        return answer({"item_id": f"I{n}", "knowledge": []}, prompt_tokens=n, completion_tokens=1,
                      delay=0.2)

    fake_llm.responder = responder
    backend = make(fake_llm, max_concurrency=3, timeout=5)
    requests = [LLMRequest(f"L3 #{n}", "l3_item", "L3", f"item #{n}", "l3_item.v1")
                for n in range(7)]
    records = backend.map(requests)
    assert [r["answer"]["item_id"] for r in records] == [f"I{n}" for n in range(7)]
    assert fake_llm.max_in_flight == 3
    usage = backend.usage()
    assert (usage["requests"], usage["http_requests"], usage["prompt_tokens"],
            usage["completion_tokens"], usage["total_tokens"]) == (7, 7, 21, 7, 28)


def test_map_attempts_all_then_raises_first_failure(fake_llm):
    def responder(body):
        prompt = body["messages"][0]["content"]
        return http_error(400) if prompt == "bad" else answer(VALID)

    fake_llm.responder = responder
    backend = make(fake_llm, max_concurrency=2)
    requests = [req("ok1", "r1"), req("bad", "r2"), req("ok3", "r3")]
    with pytest.raises(LLMRequestError, match="'r2'"):
        backend.map(requests)
    assert backend.usage()["requests"] == 3 and backend.usage()["failures"] == 1
    results = backend.map(requests, return_exceptions=True)
    assert isinstance(results[1], LLMRequestError) and results[0]["answer"] == VALID


def test_cache_hit_makes_zero_requests_on_rerun(fake_llm, tmp_path):
    path = tmp_path / "answers.jsonl"
    fake_llm.enqueue(answer(VALID, 5, 5), answer(BAD_SCHEMA), answer(VALID, 6, 6))
    first = make(fake_llm, cache=path)
    r1 = first.complete(req("A"))
    r2 = first.complete(req("B"))
    first.close()
    assert len(fake_llm.requests) == 3  # B was re-asked once

    second = make(fake_llm, cache=AnswerCache(path))
    again = [second.complete(req("A")), second.complete(req("B"))]
    assert len(fake_llm.requests) == 3  # nothing sent
    assert [a["answer"] for a in again] == [r1["answer"], r2["answer"]]
    assert [a["cached"] for a in again] == [True, True]
    assert [a["key"] for a in again] == [r1["key"], r2["key"]]
    usage = second.usage()
    assert (usage["cache_hits"], usage["requests"], usage["http_requests"], usage["total_tokens"]) \
        == (2, 0, 0, 0)
    # a new prompt version is a new key: one request
    fake_llm.enqueue(answer(VALID))
    assert second.complete(req("A", version="l1_demand.v2"))["cached"] is False
    assert len(fake_llm.requests) == 4
    second.cache.close()
    stored = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["value"]["prompt_version"] for s in stored] == ["l1_demand.v1"] * 2 + ["l1_demand.v2"]
    assert all(s["value"]["backend"] == "openai" and s["value"]["model"] == "test-model"
               for s in stored)
    assert_no_key(path.read_text())


def test_configuration_from_environment(fake_llm, monkeypatch):
    for name in ("REASEQ_LLM_BASE_URL", "REASEQ_LLM_MODEL", "REASEQ_LLM_API_KEY",
                 "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LLMConfigError, match="REASEQ_LLM_BASE_URL"):
        OpenAIBackend(model="m")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.base_url)
    with pytest.raises(LLMConfigError, match="REASEQ_LLM_MODEL"):
        OpenAIBackend()
    monkeypatch.setenv("REASEQ_LLM_MODEL", "env-model")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    backend = OpenAIBackend(sleep=lambda s: None)
    assert (backend.base_url, backend.model) == (fake_llm.base_url, "env-model")
    fake_llm.enqueue(answer(VALID))
    backend.complete(req())
    assert fake_llm.requests[-1].headers["Authorization"] == f"Bearer {KEY}"
    assert fake_llm.requests[-1].body["model"] == "env-model"
    monkeypatch.setenv("REASEQ_LLM_API_KEY", "sk-other-key")
    monkeypatch.setenv("REASEQ_LLM_BASE_URL", "http://127.0.0.1:1/v1")
    preferred = OpenAIBackend()
    assert preferred.base_url == "http://127.0.0.1:1/v1" and "sk-other-key" not in repr(preferred)
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("REASEQ_LLM_API_KEY")
    fake_llm.enqueue(answer(VALID))
    OpenAIBackend(fake_llm.base_url).complete(req("no key"))
    assert "Authorization" not in fake_llm.requests[-1].headers


def test_parse_json_answer():
    assert parse_json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    with pytest.raises(ValueError, match="JSON of type list, expected one JSON object"):
        parse_json_answer("[1]")
    with pytest.raises(ValueError, match="no content"):
        parse_json_answer(None)


def test_offline_backend_interface_and_cache(tmp_path):
    item = {"item_id": "X1", "title": "Gel", "categories": ["Beauty", "Skin_Care"],
            "brand": None, "price": None}
    request = LLMRequest("L3 X1", "l3_item", "L3", "prompt-X1", "l3_item.v1",
                         context={"item": item, "demand_dimensions": [],
                                  "attribute_dimensions": [{"name": "form"}]})
    with OfflineBackend(cache=tmp_path / "off.jsonl") as backend:
        (record,) = backend.map([request])
        assert record["backend"] == "offline" and re.fullmatch(r"makr-rules-v1-[0-9a-f]{10}",
                                                               record["model"])
        assert record["answer"] == {"item_id": "X1", "knowledge": [{
            "perspective": "attribute", "dimension": "form", "evidence": ["Gel"],
            "analysis": 'The metadata states "Gel", so the item\'s form is gel.',
            "keywords": ["gel"]}]}
        assert backend.complete(request)["cached"] is True
        assert backend.usage()["cache_hits"] == 1 and backend.usage()["requests"] == 1
    with pytest.raises(LLMRequestError, match="cannot answer agent 'nope'"):
        OfflineBackend().complete(LLMRequest("r", "nope", "L1", "p", "v"))
