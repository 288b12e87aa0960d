"""LLM backends for multi-agent knowledge reasoning: an OpenAI-compatible HTTP client and an
offline, deterministic, rule-based stand-in.

Reference: ReaSeq (TaoRank Team, arXiv 2512.21257), Section 2.1.1 "multi-agent knowledge
reasoning" (MAKR) and the Appendix prompts: three layers of LLM agents (category taxonomy,
subcategory refinement, item-level knowledge) whose answers are structured JSON.

Both backends expose the same interface:

* ``backend.complete(request) -> record`` / ``backend.complete_json(agent, prompt, schema_layer,
  prompt_version=...) -> record`` for one request, and ``backend.map(requests) -> [record, ...]``
  for many, run with at most ``max_concurrency`` requests in flight;
* every request goes through the optional :class:`~recbole_reaseq.knowledge.cache.AnswerCache`
  (key = sha256 of backend name, model, prompt version, rendered prompt);
* a *record* is ``{"request_id", "agent", "schema_layer", "backend", "model", "prompt_version",
  "key", "cached", "answer"}``; ``answer`` is the parsed JSON object, valid for ``schema_layer``;
* ``backend.usage()`` is the accounting for the run report (requests, HTTP calls, retries,
  re-asks, failures, cache hits, prompt/completion/total tokens);
* ``backend.describe()`` is the configuration for the run report (never the API key).

:class:`OpenAIBackend` speaks ``POST {base_url}/chat/completions`` with the standard library only:
bounded concurrency, per-request timeout, retries with exponential backoff and jitter on 429, 5xx,
timeouts and connection errors (honouring ``Retry-After``), and bounded *re-asks* when an answer is
not JSON, fails its schema, or fails the caller's soft check (e.g. ungrounded evidence). A re-ask
appends the rejected answer and the error message to the conversation.

:class:`OfflineBackend` needs no model: it extracts facets from the metadata (title lexicons and
patterns, category path, brand, price) and answers each layer deterministically; every evidence
string it emits is a verbatim substring of :func:`metadata_text`.

NOTE: the paper's agents run an in-house LLM over Taobao search queries and product data. Public
Amazon data has no search queries, so the demand stream reads titles and category paths instead,
and the offline backend replaces world knowledge by hand-written lexicons (English, beauty-centred).
NOTE: the offline backend's "semantic similarity" is normalised-token Jaccard: an expression joins
the existing dimension whose name best overlaps its facet label (Jaccard >= ``dim_threshold``) and
is dropped as a near-duplicate if it overlaps an expression already there (Jaccard >=
``expr_threshold``); a new dimension is created only when no dimension fits.
NOTE: token usage counts every successful (HTTP 200) completion, including answers later rejected
and re-asked, because those tokens were spent.
"""
from __future__ import annotations

import copy
import email.utils
import functools
import hashlib
import html
import json
import logging
import os
import random
import re
import socket
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import http.client
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .cache import AnswerCache, cache_key, canonical_json
from .schemas import SchemaError, validate

__all__ = [
    "LLMRequest", "LLMError", "LLMConfigError", "LLMRequestError", "LLMBackend", "OpenAIBackend",
    "OfflineBackend", "Facet", "extract_facets", "metadata_text", "clean_text", "clean_category",
    "tokens", "jaccard", "price_band", "DEMAND_LABELS", "ATTRIBUTE_LABELS", "LABEL_DESCRIPTIONS",
    "parse_json_answer", "parse_retry_after", "LEXICONS",
]

logger = logging.getLogger(__name__)

CheckFn = Callable[[Dict[str, Any]], List[str]]


# =====================================================================================  requests
@dataclass(frozen=True)
class LLMRequest:
    """One agent request.

    Attributes:
        request_id: human-readable name used in logs and errors, e.g. ``"L3 item=B0001"``.
        agent: prompt name, e.g. ``"l1_demand"``, ``"l2_refine"``, ``"l3_item"``.
        schema_layer: ``"L1"``, ``"L2"`` or ``"L3"``; the answer must match that schema.
        prompt: the fully rendered prompt (sent as the single user message).
        prompt_version: version of the prompt template (enters the cache key).
        context: structured inputs the prompt was rendered from; the offline backend answers from
            it, the OpenAI backend ignores it (it is already inside ``prompt``).
        check: optional *soft* check ``answer -> [problem, ...]``; problems trigger a re-ask
            (bounded) but never a failure: after the last re-ask the answer is returned as is.
    """

    request_id: str
    agent: str
    schema_layer: str
    prompt: str
    prompt_version: str
    context: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    check: Optional[CheckFn] = field(default=None, compare=False, repr=False)


class LLMError(RuntimeError):
    """Base class of backend errors."""


class LLMConfigError(LLMError, ValueError):
    """Missing or invalid backend configuration."""


class LLMRequestError(LLMError):
    """A request failed for good (retry or re-ask budget exhausted, or a non-retryable error).

    Attributes:
        request_id: the failing request.
        cause: the last cause, as text (API key redacted).
    """

    def __init__(self, message: str, request_id: str, cause: str):
        super().__init__(message)
        self.request_id = request_id
        self.cause = cause


def parse_json_answer(content: Optional[str]) -> Dict[str, Any]:
    """Parse a model reply into a JSON object (tolerating a Markdown code fence around it).

    Raises:
        ValueError: message says why, e.g. ``not valid JSON (Expecting value at line 1 column 1)``.
    """
    if content is None:
        raise ValueError("the reply has no content (expected one JSON object)")
    text = content.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    if fence:
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply is not valid JSON ({exc.msg} at line {exc.lineno} column "
                         f"{exc.colno}); expected one JSON object") from None
    if not isinstance(obj, dict):
        raise ValueError(f"the reply is JSON of type {type(obj).__name__}, expected one JSON object")
    return obj


# =====================================================================================  base class
_USAGE_FIELDS = ("requests", "http_requests", "retries", "reasks", "reasks_invalid_json",
                 "reasks_schema", "reasks_check", "failures", "cache_hits", "prompt_tokens",
                 "completion_tokens", "total_tokens")


class LLMBackend:
    """Shared machinery: caching, concurrency, accounting. Subclasses implement :meth:`_answer`."""

    name: str = "base"
    model: str = ""

    def __init__(self, cache: Union[AnswerCache, str, os.PathLike, None] = None,
                 max_concurrency: int = 1):
        if int(max_concurrency) < 1:
            raise LLMConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = int(max_concurrency)
        self._owns_cache = cache is not None and not isinstance(cache, AnswerCache)
        self.cache: Optional[AnswerCache] = (AnswerCache(cache) if self._owns_cache else cache)  # type: ignore[arg-type]
        self._usage_lock = threading.Lock()
        self._usage: Dict[str, int] = {k: 0 for k in _USAGE_FIELDS}

    # ---------------------------------------------------------------- accounting
    def _count(self, **deltas: int) -> None:
        with self._usage_lock:
            for k, v in deltas.items():
                self._usage[k] += int(v)

    def usage(self) -> Dict[str, int]:
        """A copy of the counters (see the module docstring)."""
        with self._usage_lock:
            return dict(self._usage)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "model": self.model, "max_concurrency": self.max_concurrency}

    # ---------------------------------------------------------------- requests
    def _answer(self, request: LLMRequest) -> Dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def key_for(self, request: LLMRequest) -> str:
        return cache_key(self.name, self.model, request.prompt_version, request.prompt)

    def complete(self, request: LLMRequest) -> Dict[str, Any]:
        """Answer one request (from the cache when possible) and return its record."""
        key = self.key_for(request)
        if self.cache is not None and key in self.cache:
            stored = self.cache.get(key)
            answer = stored.get("answer") if isinstance(stored, dict) else None
            try:
                validate(request.schema_layer, answer)
            except SchemaError as exc:
                raise LLMRequestError(
                    f"request {request.request_id!r}: the cached answer (key {key[:12]}...) in "
                    f"{self.cache.path} fails the current {request.schema_layer} schema ({exc}). "
                    f"Fix: bump the prompt version or use a new cache file.",
                    request.request_id, str(exc)) from None
            self._count(cache_hits=1)
            return self._record(request, key, answer, cached=True)
        self._count(requests=1)
        try:
            answer = self._answer(request)
        except Exception:
            self._count(failures=1)
            raise
        record = self._record(request, key, answer, cached=False)
        if self.cache is not None:
            self.cache.put(key, {k: v for k, v in record.items() if k not in ("key", "cached")})
        return record

    def complete_json(self, agent: str, prompt: str, schema_layer: str, *,
                      prompt_version: str = "unversioned", request_id: Optional[str] = None,
                      context: Optional[Mapping[str, Any]] = None,
                      check: Optional[CheckFn] = None) -> Dict[str, Any]:
        """Convenience wrapper of :meth:`complete` building the :class:`LLMRequest`; returns the
        record (the parsed answer is ``record["answer"]``). Pass the template's
        ``prompt_version`` (from ``agents.load_prompt``) so that it enters the cache key."""
        request = LLMRequest(request_id or agent, agent, schema_layer, prompt, prompt_version,
                             context or {}, check)
        return self.complete(request)

    def map(self, requests: Sequence[LLMRequest], return_exceptions: bool = False) -> List[Any]:
        """Answer ``requests`` with at most ``max_concurrency`` in flight; records in input order.

        Every request is attempted (successful answers are cached even if another fails). Then,
        unless ``return_exceptions``, the first failure in input order is raised; with it, the
        failing positions hold the exception instead of a record.
        """
        requests = list(requests)
        results: List[Any] = [None] * len(requests)

        def run(i: int) -> None:
            try:
                results[i] = self.complete(requests[i])
            except Exception as exc:  # noqa: BLE001  (re-raised below)
                results[i] = exc

        if self.max_concurrency == 1 or len(requests) <= 1:
            for i in range(len(requests)):
                run(i)
        else:
            with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(requests)),
                                    thread_name_prefix=f"{self.name}-llm") as pool:
                list(pool.map(run, range(len(requests))))
        if not return_exceptions:
            for r in results:
                if isinstance(r, Exception):
                    raise r
        return results

    def _record(self, request: LLMRequest, key: str, answer: Dict[str, Any], cached: bool
                ) -> Dict[str, Any]:
        return {"request_id": request.request_id, "agent": request.agent,
                "schema_layer": request.schema_layer, "backend": self.name, "model": self.model,
                "prompt_version": request.prompt_version, "key": key, "cached": cached,
                "answer": answer}

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Close the cache if this backend opened it from a path."""
        if self._owns_cache and self.cache is not None:
            self.cache.close()

    def __enter__(self) -> "LLMBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# =====================================================================================  OpenAI
_REASK_TEMPLATE = ("Your previous answer was rejected: {problem}\n"
                   "Reply again with ONE JSON object only, fixing this while still following every "
                   "rule and the JSON schema given above.")


class _Transient(Exception):
    def __init__(self, cause: str, retry_after: Optional[float] = None):
        super().__init__(cause)
        self.cause = cause
        self.retry_after = retry_after


class _Fatal(Exception):
    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent
    or unparsable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _env(*names: str) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _strip_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=host)
    return urllib.parse.urlunsplit(parts)


class OpenAIBackend(LLMBackend):
    """OpenAI-compatible chat-completions client (standard library only).

    Args:
        base_url: e.g. ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8000/v1"``; default
            ``$REASEQ_LLM_BASE_URL``, then ``$OPENAI_BASE_URL``.
        model: default ``$REASEQ_LLM_MODEL``.
        api_key: default ``$REASEQ_LLM_API_KEY``, then ``$OPENAI_API_KEY``; may be absent for local
            servers (then no ``Authorization`` header is sent). Never logged, shown or raised.
        cache: an :class:`AnswerCache` or a path to open one at.
        max_concurrency: HTTP requests in flight at most (also the :meth:`map` pool size).
        timeout: seconds per HTTP request (connect + read).
        max_retries: retries per HTTP call on 429 / 5xx / timeout / connection error.
        max_reasks: re-asks per request when the reply is not JSON, fails the schema, or fails the
            request's soft check.
        backoff_base, backoff_max, jitter: retry ``k`` (0-based) waits
            ``min(backoff_max, backoff_base * 2**k) * (1 + jitter * U[0,1))`` unless the server sent
            ``Retry-After`` (then that, capped at ``retry_after_max``).
        temperature: sampling temperature sent with every request.
        seed: seed of the jitter generator (deterministic waits).
        sleep: the sleep function (tests inject a recorder).
    """

    name = "openai"

    def __init__(self, base_url: Optional[str] = None, model: Optional[str] = None,
                 api_key: Optional[str] = None, *,
                 cache: Union[AnswerCache, str, os.PathLike, None] = None,
                 max_concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5,
                 max_reasks: int = 2, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 jitter: float = 0.25, retry_after_max: float = 300.0, temperature: float = 0.0,
                 seed: int = 0, sleep: Callable[[float], None] = time.sleep):
        base_url = base_url or _env("REASEQ_LLM_BASE_URL", "OPENAI_BASE_URL")
        model = model or _env("REASEQ_LLM_MODEL")
        if not base_url:
            raise LLMConfigError("OpenAIBackend: no base URL. Fix: pass base_url=... or set "
                                 "REASEQ_LLM_BASE_URL (or OPENAI_BASE_URL), e.g. "
                                 "https://api.openai.com/v1")
        if not model:
            raise LLMConfigError("OpenAIBackend: no model name. Fix: pass model=... or set "
                                 "REASEQ_LLM_MODEL, e.g. gpt-4o-mini")
        if int(max_retries) < 0 or int(max_reasks) < 0:
            raise LLMConfigError(f"max_retries and max_reasks must be >= 0, got {max_retries}, "
                                 f"{max_reasks}")
        if float(timeout) <= 0:
            raise LLMConfigError(f"timeout must be > 0 seconds, got {timeout}")
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key or _env("REASEQ_LLM_API_KEY", "OPENAI_API_KEY") or ""
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.max_reasks = int(max_reasks)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.jitter = float(jitter)
        self.retry_after_max = float(retry_after_max)
        self.temperature = float(temperature)
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._endpoint = f"{self.base_url}/chat/completions"
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in ("127.0.0.1", "localhost", "::1") else []
        self._opener = urllib.request.build_opener(*handlers)

    # ---------------------------------------------------------------- hygiene
    def _redact(self, text: str) -> str:
        if self._api_key and len(self._api_key) >= 4:
            text = text.replace(self._api_key, "[REDACTED]")
        return text

    def __repr__(self) -> str:
        return (f"OpenAIBackend(base_url={_strip_userinfo(self.base_url)!r}, model={self.model!r}, "
                f"api_key={'set' if self._api_key else 'unset'}, max_concurrency="
                f"{self.max_concurrency}, timeout={self.timeout}, max_retries={self.max_retries}, "
                f"max_reasks={self.max_reasks})")

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "model": self.model,
                "base_url": _strip_userinfo(self.base_url),
                "api_key": "set" if self._api_key else "unset",
                "max_concurrency": self.max_concurrency, "timeout": self.timeout,
                "max_retries": self.max_retries, "max_reasks": self.max_reasks,
                "temperature": self.temperature}

    # ---------------------------------------------------------------- HTTP
    def _headers(self) -> Dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _post_once(self, payload: bytes) -> Dict[str, Any]:
        """One HTTP call; returns the parsed envelope or raises _Transient / _Fatal."""
        req = urllib.request.Request(self._endpoint, data=payload, method="POST",
                                     headers=self._headers())
        try:
            with self._slots:
                self._count(http_requests=1)
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read()[:300].decode("utf-8", "replace")
            except Exception:  # noqa: BLE001
                body = ""
            finally:
                exc.close()
            cause = f"HTTP {exc.code} {exc.reason}" + (f": {body.strip()}" if body.strip() else "")
            if exc.code == 429 or exc.code == 408 or exc.code >= 500:
                retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                raise _Transient(cause, retry_after) from None
            raise _Fatal(cause) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise _Transient(f"timeout after {self.timeout:g}s (connect)") from None
            raise _Transient(f"connection error: {reason}") from None
        except (socket.timeout, TimeoutError):
            raise _Transient(f"timeout after {self.timeout:g}s (read)") from None
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            raise _Transient(f"connection error: {type(exc).__name__}: {exc}") from None
        try:
            envelope = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _Transient("invalid response envelope (not JSON)") from None
        if not isinstance(envelope, dict):
            raise _Transient("invalid response envelope (not a JSON object)")
        return envelope

    def _backoff(self, retry_index: int, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        delay = min(self.backoff_max, self.backoff_base * (2 ** retry_index))
        with self._rng_lock:
            u = self._rng.random()
        return delay * (1.0 + self.jitter * u)

    def _chat(self, messages: List[Dict[str, str]], request_id: str) -> str:
        """POST one conversation with retries; return the assistant content string."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "response_format": {"type": "json_object"}}
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                envelope = self._post_once(payload)
                usage = envelope.get("usage") or {}
                p = int(usage.get("prompt_tokens") or 0)
                c = int(usage.get("completion_tokens") or 0)
                t = int(usage.get("total_tokens") or (p + c))
                self._count(prompt_tokens=p, completion_tokens=c, total_tokens=t)
                try:
                    content = envelope["choices"][0]["message"]["content"]
                except (KeyError, IndexError, TypeError):
                    raise _Transient("invalid response envelope (no choices[0].message.content)")
                return content if isinstance(content, str) else json.dumps(content)
            except _Fatal as exc:
                cause = self._redact(exc.cause)
                raise LLMRequestError(f"LLM request {request_id!r} failed (not retryable): {cause}",
                                      request_id, cause) from None
            except _Transient as exc:
                cause = self._redact(exc.cause)
                if attempt == attempts - 1:
                    raise LLMRequestError(
                        f"LLM request {request_id!r} failed after {attempts} attempt(s) "
                        f"({self.max_retries} retries); last cause: {cause}. Fix: check the "
                        f"server at {_strip_userinfo(self.base_url)}, or raise timeout / "
                        f"max_retries.", request_id, cause) from None
                delay = self._backoff(attempt, exc.retry_after)
                self._count(retries=1)
                logger.warning("LLM request %r: %s; retry %d/%d in %.3fs", request_id, cause,
                               attempt + 1, self.max_retries, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _answer(self, request: LLMRequest) -> Dict[str, Any]:
        messages = [{"role": "user", "content": request.prompt}]
        for round_ in range(self.max_reasks + 1):
            content = self._chat(messages, request.request_id)
            kind, problem, obj = self._judge(request, content)
            if kind is None:
                return obj  # type: ignore[return-value]
            last_round = round_ == self.max_reasks
            if kind == "check":
                if last_round:
                    logger.info("LLM request %r: soft check still fails after %d re-ask(s): %s; "
                                "keeping the answer", request.request_id, self.max_reasks,
                                self._redact(problem))
                    return obj  # type: ignore[return-value]
            elif last_round:
                cause = self._redact(problem)
                raise LLMRequestError(
                    f"LLM request {request.request_id!r}: the answer is still invalid after "
                    f"{self.max_reasks} re-ask(s); last cause: {cause}", request.request_id, cause)
            self._count(reasks=1, **{f"reasks_{kind}": 1})
            logger.info("LLM request %r: re-asking (%s): %s", request.request_id, kind,
                        self._redact(problem)[:300])
            messages = messages + [{"role": "assistant", "content": content},
                                   {"role": "user", "content": _REASK_TEMPLATE.format(problem=problem)}]
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _judge(request: LLMRequest, content: str
               ) -> Tuple[Optional[str], str, Optional[Dict[str, Any]]]:
        try:
            obj = parse_json_answer(content)
        except ValueError as exc:
            return "invalid_json", str(exc), None
        try:
            validate(request.schema_layer, obj)
        except SchemaError as exc:
            return "schema", str(exc), None
        if request.check is not None:
            problems = list(request.check(obj))
            if problems:
                return "check", "; ".join(problems), obj
        return None, "", obj


# =====================================================================================  text utils
_WS = re.compile(r"\s+")
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[^\W\d_]+")


def clean_text(text: Optional[str]) -> str:
    """HTML-unescape (twice, for doubly escaped dumps), NFKC and collapse whitespace."""
    if not text:
        return ""
    text = html.unescape(html.unescape(str(text)))
    text = unicodedata.normalize("NFKC", text)
    return _WS.sub(" ", text).strip()


def clean_category(name: str) -> str:
    """Category level as displayed: HTML-unescaped, ``_`` -> space (``Skin_Care`` -> ``Skin Care``)."""
    return _WS.sub(" ", clean_text(name).replace("_", " ")).strip()


@functools.lru_cache(maxsize=1 << 16)
def tokens(text: str) -> frozenset:
    """Normalised token set (lowercase words and numbers) used for Jaccard similarity."""
    return frozenset(_TOKEN.findall(clean_text(text).replace("_", " ").lower()))


def jaccard(a: str, b: str) -> float:
    """Jaccard similarity of :func:`tokens` of two strings (0.0 if both are empty)."""
    ta, tb = tokens(a), tokens(b)
    union = ta | tb
    return len(ta & tb) / len(union) if union else 0.0


def price_band(price: Optional[float]) -> str:
    """``budget`` (< $10), ``mid`` ($10 to < $30), ``premium`` ($30 to $60), ``luxury`` (> $60),
    ``unknown`` (missing, non-positive or NaN)."""
    if price is None:
        return "unknown"
    try:
        p = float(price)
    except (TypeError, ValueError):
        return "unknown"
    if p != p or p <= 0:
        return "unknown"
    if p < 10:
        return "budget"
    if p < 30:
        return "mid"
    if p <= 60:
        return "premium"
    return "luxury"


def _price_text(price: Optional[float]) -> Optional[str]:
    return None if price_band(price) == "unknown" else f"${float(price):.2f}"  # type: ignore[arg-type]


def metadata_text(item: Mapping[str, Any]) -> str:
    """The item's metadata as one text: the only source evidence may be quoted from.

    ::

        title: <title, HTML-unescaped>
        categories: Beauty > Skin Care > Face
        brand: <brand>
        price: $24.99
    """
    lines = [f"title: {clean_text(item.get('title'))}"]
    cats = [clean_category(c) for c in (item.get("categories") or []) if clean_category(c)]
    if cats:
        lines.append("categories: " + " > ".join(cats))
    brand = clean_text(item.get("brand"))
    if brand:
        lines.append(f"brand: {brand}")
    price = _price_text(item.get("price"))
    if price:
        lines.append(f"price: {price}")
    return "\n".join(lines)


# =====================================================================================  offline facets
DEMAND_LABELS = ("need", "occasion", "target", "category need")
ATTRIBUTE_LABELS = ("brand", "form", "size", "pack", "price band", "colour", "scent", "category")

LABEL_DESCRIPTIONS = {
    "need": "The benefit the shopper wants or the problem the product should solve.",
    "occasion": "When, where or for which use case the shopper intends to use the product.",
    "target": "Who the product is meant for: person, skin type or hair type.",
    "category need": "The kind of product the shopper is looking for.",
    "brand": "Manufacturer or brand of the item.",
    "form": "Physical form or texture of the product.",
    "size": "Net size, volume or weight of one unit.",
    "pack": "Number of units or pieces sold together.",
    "price band": "Price level: budget (< $10), mid ($10-30), premium ($30-60), luxury (> $60).",
    "colour": "Colour or shade of the product.",
    "scent": "Fragrance or scent of the product.",
    "category": "Position of the item in the catalogue category tree.",
}

# canonical keyword -> surface variants (matched case-insensitively on word boundaries; a space or
# hyphen in a variant matches any run of spaces/hyphens, or nothing).
LEXICONS: Dict[str, Dict[str, Tuple[str, ...]]] = {
    "need": {
        "moisturizing": ("moisturizing", "moisturising"),
        "hydrating": ("hydrating", "hydration"),
        "nourishing": ("nourishing",),
        "anti-aging": ("anti-aging", "anti-ageing"),
        "anti-wrinkle": ("anti-wrinkle",),
        "firming": ("firming",),
        "brightening": ("brightening", "illuminating"),
        "volumizing": ("volumizing", "volumising", "voluminous"),
        "lengthening": ("lengthening",),
        "smoothing": ("smoothing",),
        "strengthening": ("strengthening", "fortifying"),
        "repairing": ("repairing",),
        "soothing": ("soothing", "calming"),
        "long-lasting": ("long-lasting", "long-wearing", "long wear"),
        "waterproof": ("waterproof", "water-resistant"),
        "smudge-proof": ("smudge-proof",),
        "oil-free": ("oil-free",),
        "matte": ("matte", "mattifying"),
        "poreless": ("poreless", "pore-minimizing"),
        "exfoliating": ("exfoliating",),
        "cleansing": ("cleansing", "purifying", "clarifying"),
        "acne": ("acne",),
        "sulfate-free": ("sulfate-free", "sulphate-free"),
        "paraben-free": ("paraben-free",),
        "hypoallergenic": ("hypoallergenic",),
        "organic": ("organic",),
        "vegan": ("vegan",),
        "cruelty-free": ("cruelty-free",),
        "anti-frizz": ("anti-frizz", "frizz control"),
        "color protection": ("color protect", "colour protect", "color-safe"),
        "thickening": ("thickening",),
        "detangling": ("detangling",),
        "anti-dandruff": ("anti-dandruff", "dandruff"),
        "whitening": ("whitening",),
        "sun protection": ("sun protection", "sunblock"),
    },
    "occasion": {
        "travel": ("travel size", "travel",),
        "daily use": ("everyday", "daily"),
        "night": ("overnight", "night"),
        "gift": ("gift set", "gift"),
        "salon": ("salon", "professional"),
        "wedding": ("wedding", "bridal"),
        "party": ("party",),
        "summer": ("summer",),
        "winter": ("winter",),
        "shower": ("shower",),
        "on the go": ("on the go", "portable"),
        "workout": ("workout", "gym"),
        "halloween": ("halloween", "costume"),
    },
    "target": {
        "men": ("men's", "mens", "men", "male"),
        "women": ("women's", "womens", "women", "female", "ladies"),
        "kids": ("kids", "children", "child", "toddler"),
        "baby": ("baby", "infant"),
        "teens": ("teens", "teen"),
        "unisex": ("unisex",),
        "dry skin": ("dry skin",),
        "oily skin": ("oily skin",),
        "sensitive skin": ("sensitive skin",),
        "combination skin": ("combination skin",),
        "normal skin": ("normal skin",),
        "mature skin": ("mature skin",),
        "acne-prone skin": ("acne-prone skin",),
        "all skin types": ("all skin types",),
        "curly hair": ("curly hair",),
        "dry hair": ("dry hair",),
        "damaged hair": ("damaged hair",),
        "fine hair": ("fine hair",),
        "thin hair": ("thinning hair", "thin hair"),
        "thick hair": ("thick hair",),
        "color-treated hair": ("color-treated hair", "colored hair"),
        "oily hair": ("oily hair",),
        "all hair types": ("all hair types",),
    },
    "category need": {
        "mascara": ("mascara",),
        "eyeliner": ("eyeliner", "eye liner"),
        "eyeshadow": ("eyeshadow", "eye shadow"),
        "eyebrow": ("eyebrow", "brow"),
        "false eyelashes": ("false eyelashes", "false lashes"),
        "lipstick": ("lipstick", "lip stick"),
        "lip gloss": ("lip gloss",),
        "lip balm": ("lip balm",),
        "lip liner": ("lip liner", "lipliner"),
        "foundation": ("foundation",),
        "concealer": ("concealer",),
        "blush": ("blush", "blusher"),
        "bronzer": ("bronzer",),
        "highlighter": ("highlighter",),
        "primer": ("primer",),
        "setting spray": ("setting spray",),
        "nail polish": ("nail polish", "nail lacquer", "nail color", "nail colour"),
        "shampoo": ("shampoo",),
        "conditioner": ("conditioner",),
        "hair dye": ("hair dye", "hair color", "hair colour"),
        "moisturizer": ("moisturizer", "moisturiser"),
        "cleanser": ("cleanser", "face wash", "facial wash"),
        "toner": ("toner",),
        "sunscreen": ("sunscreen", "sun screen"),
        "perfume": ("eau de parfum", "perfume", "parfum"),
        "cologne": ("eau de toilette", "cologne"),
        "body wash": ("body wash", "shower gel"),
        "body lotion": ("body lotion", "hand lotion"),
        "deodorant": ("deodorant", "antiperspirant"),
        "soap": ("soap",),
        "makeup remover": ("makeup remover",),
        "makeup brush": ("makeup brush", "brushes", "brush"),
        "makeup sponge": ("makeup sponge", "sponge", "beauty blender"),
        "razor": ("razor", "shaver"),
        "hair dryer": ("hair dryer", "blow dryer"),
        "flat iron": ("flat iron", "straightener"),
        "curling iron": ("curling iron", "curling wand"),
        "hair spray": ("hair spray", "hairspray"),
        "hair mask": ("hair mask",),
        "face mask": ("face mask", "facial mask", "sheet mask"),
        "eye cream": ("eye cream",),
        "night cream": ("night cream",),
        "tweezers": ("tweezers", "tweezer"),
        "nail file": ("nail file",),
        "shaving cream": ("shaving cream", "shave cream"),
    },
    "form": {
        "cream": ("cream", "creme"),
        "gel": ("gel",),
        "serum": ("serum",),
        "spray": ("spray", "mist"),
        "powder": ("powder",),
        "stick": ("stick",),
        "liquid": ("liquid",),
        "lotion": ("lotion",),
        "oil": ("oil",),
        "balm": ("balm",),
        "foam": ("foam", "mousse"),
        "pencil": ("pencil",),
        "wax": ("wax",),
        "scrub": ("scrub",),
        "butter": ("butter",),
        "wipes": ("wipes", "towelettes"),
        "pads": ("pads",),
        "bar": ("bar",),
        "roll-on": ("roll-on",),
        "palette": ("palette",),
        "kit": ("kit",),
    },
    "colour": {
        "black": ("black",), "brown": ("brown",), "red": ("red",), "pink": ("pink",),
        "nude": ("nude",), "blue": ("blue",), "green": ("green",), "purple": ("purple",),
        "rose gold": ("rose gold",), "gold": ("gold",), "silver": ("silver",),
        "white": ("white",), "coral": ("coral",), "plum": ("plum",), "berry": ("berry",),
        "beige": ("beige",), "ivory": ("ivory",), "bronze": ("bronze",),
        "burgundy": ("burgundy",), "grey": ("grey", "gray"), "orange": ("orange",),
        "yellow": ("yellow",), "violet": ("violet",), "clear": ("clear",), "mauve": ("mauve",),
        "peach": ("peach",), "taupe": ("taupe",),
    },
    "scent": {
        "lavender": ("lavender",), "vanilla": ("vanilla",), "rose": ("rose",),
        "citrus": ("citrus",), "lemon": ("lemon",), "coconut": ("coconut",),
        "peppermint": ("peppermint",), "mint": ("mint",), "eucalyptus": ("eucalyptus",),
        "jasmine": ("jasmine",), "floral": ("floral",), "fruity": ("fruity",),
        "musk": ("musk",), "sandalwood": ("sandalwood",), "tea tree": ("tea tree",),
        "cucumber": ("cucumber",), "almond": ("almond",), "grapefruit": ("grapefruit",),
        "unscented": ("unscented", "fragrance-free", "scent-free"),
    },
}

_SIZE_RE = re.compile(
    r"(?<![\w.])(\d+(?:\.\d+)?)\s*-?\s*(fl\.?\s*oz|fluid\s+ounces?|oz|ounces?|ml|milliliters?|"
    r"millilitres?|kg|g|grams?|lbs?|pounds?|mg)(?!\w)", re.I)
_PACK_RE = re.compile(
    r"(?<!\w)(?:(?:pack|set|box|case)\s+of\s+(\d+)|(\d+)\s*-?\s*(packs?|pk|count|ct|pcs|pieces?|"
    r"pairs?|sets?)|(twin|double|triple)\s*-?\s*pack)(?!\w)", re.I)
_SPF_RE = re.compile(r"(?<!\w)spf\s*-?\s*(\d+)(?!\w)", re.I)
_UNIT = {"fl": "fl oz", "floz": "fl oz",  # "8floz": the pattern allows no space
         "fluid": "fl oz", "oz": "oz", "ounce": "oz", "ounces": "oz", "ml": "ml",
         "milliliter": "ml", "milliliters": "ml", "millilitre": "ml", "millilitres": "ml",
         "kg": "kg", "g": "g", "gram": "g", "grams": "g", "lb": "lb", "lbs": "lb", "pound": "lb",
         "pounds": "lb", "mg": "mg"}
_PACK_UNIT = {"pack": "pack", "packs": "pack", "pk": "pack", "count": "count", "ct": "count",
              "pcs": "count", "piece": "count", "pieces": "count", "pair": "pair", "pairs": "pair",
              "set": "set", "sets": "set"}
_MULTI = {"twin": 2, "double": 2, "triple": 3}


def _variant_pattern(variant: str) -> str:
    parts = [p for p in re.split(r"[\s\-]+", variant) if p]
    return r"[\s\-]*".join(re.escape(p) for p in parts)


def _compile_lexicon(lexicon: Mapping[str, Sequence[str]], no_free_suffix: bool = False):
    """One regex per facet; group ``g<i>`` <-> canonical ``i``; longest variants first."""
    canon = list(lexicon)
    alts = []
    for i, c in enumerate(canon):
        for v in lexicon[c]:
            alts.append((len(v), i, v))
    alts.sort(key=lambda t: (-t[0], t[1], t[2]))
    parts = [f"(?P<g{i}_{n}>{_variant_pattern(v)})" for n, (_, i, v) in enumerate(alts)]
    tail = r"(?![\w\-]*[\s\-]*free\b)" if no_free_suffix else ""
    return canon, re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)" + tail, re.I)


_COMPILED = {label: _compile_lexicon(lex, no_free_suffix=(label == "form"))
             for label, lex in LEXICONS.items()}


@dataclass(frozen=True)
class Facet:
    """One fact read off the metadata: ``label`` (a dimension label of :data:`DEMAND_LABELS` or
    :data:`ATTRIBUTE_LABELS`), canonical ``keyword`` and verbatim ``evidence``."""

    stream: str
    label: str
    keyword: str
    evidence: str


def _lexicon_facets(label: str, title: str) -> List[Tuple[int, str, str]]:
    canon, regex = _COMPILED[label]
    out = []
    for m in regex.finditer(title):
        idx = int(m.lastgroup.split("_")[0][1:])  # type: ignore[union-attr]
        out.append((m.start(), canon[idx], m.group(0)))
    return out


def _number(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _size_facets(title: str) -> List[Tuple[int, str, str]]:
    out = []
    for m in _SIZE_RE.finditer(title):
        unit = _UNIT[re.split(r"[\s.]", m.group(2).lower())[0]]
        out.append((m.start(), f"{_number(m.group(1))} {unit}", m.group(0)))
    return out


def _pack_facets(title: str) -> List[Tuple[int, str, str]]:
    out = []
    for m in _PACK_RE.finditer(title):
        if m.group(1):
            kw = f"{int(m.group(1))} pack"
        elif m.group(2):
            kw = f"{int(m.group(2))} {_PACK_UNIT[m.group(3).lower()]}"
        else:
            kw = f"{_MULTI[m.group(4).lower()]} pack"
        out.append((m.start(), kw, m.group(0)))
    return out


def _spf_facets(title: str) -> List[Tuple[int, str, str]]:
    return [(m.start(), f"spf {int(m.group(1))}", m.group(0)) for m in _SPF_RE.finditer(title)]


def extract_facets(item: Mapping[str, Any]) -> List[Facet]:
    """All facets of one item, ordered by label (demand labels, then attribute labels) and, within
    a label, by position in the title; duplicate keywords of one label are kept once (first)."""
    title = clean_text(item.get("title"))
    cats = [clean_category(c) for c in (item.get("categories") or []) if clean_category(c)]
    brand = clean_text(item.get("brand"))
    price = _price_text(item.get("price"))
    found: Dict[str, List[Tuple[int, str, str]]] = {}
    found["need"] = sorted(_lexicon_facets("need", title) + _spf_facets(title))
    found["occasion"] = _lexicon_facets("occasion", title)
    found["target"] = _lexicon_facets("target", title)
    found["category need"] = ([(-1, cats[-1].lower(), cats[-1])] if cats else []) + \
        _lexicon_facets("category need", title)
    found["brand"] = [(-1, brand.lower(), brand)] if brand else []
    found["form"] = _lexicon_facets("form", title)
    found["size"] = _size_facets(title)
    found["pack"] = _pack_facets(title)
    found["price band"] = [(-1, price_band(item.get("price")), price)] if price else []
    found["colour"] = _lexicon_facets("colour", title)
    found["scent"] = _lexicon_facets("scent", title)
    if cats:
        shown = cats[1:] if len(cats) > 1 else cats
        path = " > ".join(shown)
        found["category"] = [(-1, c.lower(), path) for c in shown]
    facets: List[Facet] = []
    for stream, labels in (("demand", DEMAND_LABELS), ("attribute", ATTRIBUTE_LABELS)):
        for label in labels:
            seen = set()
            for _, kw, ev in found.get(label, []):
                if kw in seen:
                    continue
                seen.add(kw)
                facets.append(Facet(stream, label, kw, ev))
    return facets


def _best_dimension(label: str, names: Sequence[str], threshold: float) -> Optional[int]:
    """Index of the dimension name with the highest Jaccard to ``label`` if that is
    ``>= threshold`` (ties -> the first), else None."""
    best, best_sim = None, -1.0
    for i, name in enumerate(names):
        sim = jaccard(label, name)
        if sim >= threshold and sim > best_sim:
            best, best_sim = i, sim
    return best


# =====================================================================================  offline
class OfflineBackend(LLMBackend):
    """Deterministic, model-free stand-in that answers every MAKR layer from metadata alone.

    Same input -> byte-identical answers. The ``model`` string embeds a digest of the lexicons and
    thresholds, so changing the rules changes the cache keys.

    Args:
        cache: an :class:`AnswerCache` or a path to open one at (optional).
        max_concurrency: pool size of :meth:`map` (1 keeps the cache file order deterministic).
        dim_threshold: Jaccard between a facet label and a dimension name to merge into it.
        expr_threshold: Jaccard between two expressions for the second to count as a duplicate.
    """

    name = "offline"
    RULES_VERSION = "1"

    def __init__(self, cache: Union[AnswerCache, str, os.PathLike, None] = None, *,
                 max_concurrency: int = 1, dim_threshold: float = 0.6,
                 expr_threshold: float = 0.6):
        super().__init__(cache=cache, max_concurrency=max_concurrency)
        if not (0 < dim_threshold <= 1 and 0 < expr_threshold <= 1):
            raise LLMConfigError(f"thresholds must lie in (0, 1], got dim_threshold="
                                 f"{dim_threshold}, expr_threshold={expr_threshold}")
        self.dim_threshold = float(dim_threshold)
        self.expr_threshold = float(expr_threshold)
        digest = hashlib.sha256(canonical_json(
            [LEXICONS, LABEL_DESCRIPTIONS, _SIZE_RE.pattern, _PACK_RE.pattern, _SPF_RE.pattern,
             self.dim_threshold, self.expr_threshold]).encode("utf-8")).hexdigest()[:10]
        self.model = f"makr-rules-v{self.RULES_VERSION}-{digest}"

    def __repr__(self) -> str:
        return (f"OfflineBackend(model={self.model!r}, dim_threshold={self.dim_threshold}, "
                f"expr_threshold={self.expr_threshold})")

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.name, "model": self.model, "max_concurrency": self.max_concurrency,
                "dim_threshold": self.dim_threshold, "expr_threshold": self.expr_threshold}

    def _answer(self, request: LLMRequest) -> Dict[str, Any]:
        ctx = request.context
        if request.agent in ("l1_demand", "l1_attribute"):
            answer = self.layer1(ctx["category"], request.agent[3:], ctx["items"],
                                 ctx.get("dimensions") or [])
        elif request.agent == "l2_refine":
            answer = self.layer2(ctx["subcategory"], ctx["category"], ctx["stream"],
                                 ctx["dimensions"], ctx["items"], ctx.get("subcategory_size"))
        elif request.agent == "l3_item":
            answer = self.layer3(ctx["item"], ctx["demand_dimensions"], ctx["attribute_dimensions"])
        else:
            raise LLMRequestError(f"OfflineBackend cannot answer agent {request.agent!r} (request "
                                  f"{request.request_id!r}); known agents: l1_demand, "
                                  f"l1_attribute, l2_refine, l3_item", request.request_id,
                                  "unknown agent")
        validate(request.schema_layer, answer)  # a failure here is a bug in the rules
        return answer

    # ---------------------------------------------------------------- layer 1
    def merge_expression(self, dimensions: List[Dict[str, Any]], label: str, expression: str
                         ) -> None:
        """Merge one expression into ``dimensions`` in place (see the module NOTE)."""
        idx = _best_dimension(label, [d["name"] for d in dimensions], self.dim_threshold)
        if idx is None:
            dimensions.append({"name": label, "description": LABEL_DESCRIPTIONS.get(
                label, f"Shopper-facing {label}."), "expressions": []})
            idx = len(dimensions) - 1
        exprs = dimensions[idx]["expressions"]
        if not any(e.lower() == expression.lower() or jaccard(e, expression) >= self.expr_threshold
                   for e in exprs):
            exprs.append(expression)

    def layer1(self, category: str, stream: str, items: Sequence[Mapping[str, Any]],
               dimensions: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        dims = copy.deepcopy([dict(d) for d in dimensions])
        for item in items:
            for f in extract_facets(item):
                if f.stream == stream:
                    self.merge_expression(dims, f.label, f.keyword)
        if not dims:  # nothing extractable: fall back to the category itself
            label = "category need" if stream == "demand" else "category"
            self.merge_expression(dims, label, clean_category(category).lower() or "unknown")
        return {"category": category, "stream": stream, "dimensions": dims}

    # ---------------------------------------------------------------- layer 2
    def layer2(self, subcategory: str, category: str, stream: str,
               dimensions: Sequence[Mapping[str, Any]], items: Sequence[Mapping[str, Any]],
               subcategory_size: Optional[int] = None) -> Dict[str, Any]:
        names = [d["name"] for d in dimensions]
        n = len(items)
        attrs: Dict[Any, List[str]] = {}
        cover: Dict[Any, int] = {}
        for item in items:
            hit = set()
            for f in extract_facets(item):
                if f.stream != stream:
                    continue
                idx = _best_dimension(f.label, names, self.dim_threshold)
                slot = idx if idx is not None else f.label
                if f.keyword not in attrs.setdefault(slot, []):
                    attrs[slot].append(f.keyword)
                hit.add(slot)
            for slot in hit:
                cover[slot] = cover.get(slot, 0) + 1
        out, kept, unseen = [], [], []
        for i, d in enumerate(dimensions):
            k = cover.get(i, 0)
            (kept if k else unseen).append(d["name"])
            out.append({"name": d["name"], "origin": "inherited",
                        "justification": (f"Inherited from the L1 {stream} taxonomy of '{category}';"
                                          f" observed in {k}/{n} sampled items."),
                        "attributes": list(attrs.get(i, [])),
                        "expressions": list(d["expressions"])})
        new_labels = [lab for lab in (DEMAND_LABELS if stream == "demand" else ATTRIBUTE_LABELS)
                      if lab in attrs]
        for lab in new_labels:
            out.append({"name": lab, "origin": "new",
                        "justification": (f"No L1 {stream} dimension covers '{lab}', yet it is "
                                          f"observed in {cover[lab]}/{n} sampled items."),
                        "attributes": list(attrs[lab]), "expressions": list(attrs[lab])})
        total = subcategory_size if subcategory_size is not None else n
        reasoning = (f"Sampled {n} of {total} items of '{subcategory}'. "
                     f"Kept all {len(dimensions)} L1 {stream} dimensions of '{category}' as "
                     f"inherited (they are orthogonal by construction: one facet family each). "
                     f"Observed in the sample: {', '.join(kept) or 'none'}. "
                     f"Not observed (kept for completeness): {', '.join(unseen) or 'none'}. "
                     f"New dimensions: {', '.join(new_labels) or 'none'}.")
        return {"subcategory": subcategory, "reasoning": reasoning, "dimensions": out}

    # ---------------------------------------------------------------- layer 3
    def layer3(self, item: Mapping[str, Any], demand_dimensions: Sequence[Mapping[str, Any]],
               attribute_dimensions: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        facets = extract_facets(item)
        knowledge = []
        for stream, dims in (("demand", demand_dimensions), ("attribute", attribute_dimensions)):
            names = [d["name"] for d in dims]
            grouped: Dict[int, List[Facet]] = {}
            for f in facets:
                if f.stream == stream:
                    idx = _best_dimension(f.label, names, self.dim_threshold)
                    if idx is not None:
                        grouped.setdefault(idx, []).append(f)
            for idx in sorted(grouped):
                fs = grouped[idx]
                evidence = list(dict.fromkeys(f.evidence for f in fs))
                keywords = list(dict.fromkeys(f.keyword for f in fs))
                quoted = ", ".join(f'"{e}"' for e in evidence)
                if stream == "demand":
                    analysis = (f"The metadata states {quoted}, so the item serves shoppers whose "
                                f"{names[idx]} is {', '.join(keywords)}.")
                else:
                    analysis = (f"The metadata states {quoted}, so the item's {names[idx]} is "
                                f"{', '.join(keywords)}.")
                knowledge.append({"perspective": stream, "dimension": names[idx],
                                  "evidence": evidence, "analysis": analysis,
                                  "keywords": keywords})
        return {"item_id": str(item["item_id"]), "knowledge": knowledge}
