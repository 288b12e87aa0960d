"""Client overhead of the OpenAI backend against a local fake LLM server (ReaSeq MAKR, Section 2.1.1).

Claim checked: "with the openai backend, client overhead is negligible next to server time". The
benchmark starts a fake OpenAI-compatible server on 127.0.0.1 in a *separate process* (so that the
server's Python work neither shares the client's GIL nor is counted in the client's CPU time).
Every ``POST .../chat/completions`` is answered with a schema-valid L3 answer for the item named in
the prompt, after a fixed server-side delay taken from the URL (``/d<ms>/v1``), e.g. 0, 20, 100 ms.

The client is :class:`recbole_reaseq.knowledge.backends.OpenAIBackend` driven through its public
API: ``map`` (the main grid, concurrency 1 and 8) and a ``complete_json`` loop (one extra row).
Requests are real rendered ``l3_item`` prompts (``agents.render_prompt``) for synthetic beauty
items, each distinct, so none hits the cache by accident. Every run gets a fresh
:class:`AnswerCache` file (fsync per answer, as in production); after each fresh run, the same
requests are replayed with the cache reopened (``warm``), which must make zero HTTP requests
(checked both by the backend's counters and by the server's request counter). Two ``none`` rows
(no cache) at 0 ms isolate the cache's own cost.

Measures, per run (N requests, concurrency c, all times from ``time.perf_counter``):

* ``wall``: around the ``map`` call (or the ``complete_json`` loop);
* ``server busy``: sum over requests of the server handler time, measured in the server from the
  start of ``do_POST`` (body read) to the flushed reply, delay included;
* ``overhead/req = (wall * c - server busy) / N``: slot time not spent inside the server handler,
  per request: client Python (cache key, JSON, urllib, envelope parse, schema validation, cache
  append + fsync), TCP connect/accept and HTTP request-line/header parsing, thread and GIL
  scheduling, and idle slots at the start and end of the batch. An upper bound of the client's
  cost per request (at c = 1 it is exactly mean latency minus mean server time);
* ``client CPU/req``: CPU time (user + system) of the client process / N, a direct measure of the
  client's work; ``1 / client CPU/req`` is the throughput ceiling of one client process;
* ratios: ``overhead / server time per request`` and ``overhead / 1 s`` (a realistic LLM latency).

Writes ``benchmarks/results/llm_client_overhead.{md,csv}`` with the machine, versions, and config.

Usage (on a shared machine keep it polite)::

    nice -n 10 python benchmarks/llm_client_overhead.py

NOTE: only loopback traffic; the server process is ended (by its own pid) at the end.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import cpu_model  # noqa: E402
from typing import Any, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
REALISTIC_LLM_S = 1.0
_ITEM_ID = re.compile(r'with "item_id" = "([^"]+)"')
_DELAY = re.compile(r"^/d(\d+(?:\.\d+)?)/")


# =====================================================================================  server
class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.busy_s = 0.0
        self.sleep_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0

    def snapshot(self) -> Dict[str, Any]:
        with self.lock:
            return {"requests": self.requests, "busy_s": self.busy_s, "sleep_s": self.sleep_s,
                    "max_in_flight": self.max_in_flight, "cpu_s": time.process_time()}


def l3_answer(item_id: str, prompt: str) -> Dict[str, Any]:
    """A schema-valid (and grounded) L3 answer: evidence quoted from the prompt's metadata."""
    m = re.search(r"title: ([^\n]+)", prompt)
    title = m.group(1) if m else item_id
    words = title.split()
    return {"item_id": item_id, "knowledge": [
        {"perspective": "demand", "dimension": "need", "evidence": [" ".join(words[:3])],
         "analysis": "The title names the benefit the shopper is looking for.",
         "keywords": [w.lower() for w in words[1:3]] or ["care"]},
        {"perspective": "attribute", "dimension": "size", "evidence": [words[-1]],
         "analysis": "The title states the net size of one unit.", "keywords": [words[-1].lower()]},
    ]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/stats":
            self._send(200, self.server.stats.snapshot())
        else:
            self._send(404, {"error": "unknown path"})

    def do_POST(self) -> None:  # noqa: N802
        start = time.perf_counter()
        stats = self.server.stats
        with stats.lock:
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        slept = 0.0
        try:
            if self.path == "/reset":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with stats.lock:
                    stats.max_in_flight = 1
                self._send(200, {"ok": True})
                return
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            m = _DELAY.match(self.path)
            if not m or not self.path.endswith("/chat/completions"):
                self._send(404, {"error": {"message": f"unknown path {self.path}"}})
                return
            prompt = body["messages"][0]["content"]
            found = _ITEM_ID.search(prompt)
            item_id = found.group(1) if found else "unknown"
            content = json.dumps(l3_answer(item_id, prompt))
            delay = float(m.group(1)) / 1000.0
            if delay:
                t0 = time.perf_counter()
                time.sleep(delay)
                slept = time.perf_counter() - t0
            envelope = {"id": f"chatcmpl-{item_id}", "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                        "usage": {"prompt_tokens": len(prompt) // 4,
                                  "completion_tokens": len(content) // 4,
                                  "total_tokens": (len(prompt) + len(content)) // 4}}
            self._send(200, envelope)
            with stats.lock:
                stats.requests += 1
                stats.busy_s += time.perf_counter() - start
                stats.sleep_s += slept
        finally:
            with stats.lock:
                stats.in_flight -= 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default (5) can drop SYNs at concurrency 8 -> 1 s retransmits
    stats: _Stats


def serve() -> int:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.stats = _Stats()
    print(httpd.server_address[1], flush=True)
    try:
        httpd.serve_forever(poll_interval=0.05)
    except KeyboardInterrupt:
        pass
    return 0


# =====================================================================================  client
def _http(url: str, data: bytes = None) -> Dict[str, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(url, data=data, method="POST" if data else "GET"),
                     timeout=10) as resp:
        return json.loads(resp.read())


def make_requests(n: int, tag: str) -> List[Any]:
    """``n`` distinct rendered l3_item requests (real template, synthetic items)."""
    from recbole_reaseq.knowledge.agents import render_prompt
    from recbole_reaseq.knowledge.backends import LLMRequest, metadata_text
    from recbole_reaseq.knowledge.schemas import schema_json

    forms = ["Cream", "Serum", "Lotion", "Shampoo", "Cleanser", "Toner", "Mask", "Oil"]
    needs = ["Hydrating", "Anti-Aging", "Soothing", "Brightening", "Clarifying", "Volumizing"]
    demand = json.dumps([{"name": n, "attributes": [], "expressions": [f"looking for {n}"]}
                         for n in ("need", "occasion", "target", "category need")], indent=1)
    attribute = json.dumps([{"name": n, "attributes": [], "expressions": [f"{n} of the item"]}
                            for n in ("brand", "form", "size", "pack", "price band")], indent=1)
    schema = schema_json("L3")
    out = []
    for i in range(n):
        item = {"item_id": f"{tag}{i:05d}",
                "title": f"Acme {needs[i % len(needs)]} Face {forms[i % len(forms)]} "
                         f"for Dry Skin, {1 + i % 5}.{i % 10} oz",
                "categories": ["Beauty", "Skin Care", "Face"], "brand": "Acme",
                "price": 5 + (i * 37) % 60}
        prompt, version = render_prompt("l3_item", item_id=item["item_id"],
                                        subcategory="Beauty > Skin Care > Face",
                                        metadata_text=metadata_text(item),
                                        demand_dimensions=demand, attribute_dimensions=attribute,
                                        schema=schema)
        out.append(LLMRequest(f"L3 item={item['item_id']!r}", "l3_item", "L3", prompt, version))
    return out


def run_once(*, port: int, delay_ms: float, concurrency: int, api: str, cache_mode: str,
             requests: List[Any], cache_path: Path) -> Dict[str, Any]:
    from recbole_reaseq.knowledge.backends import OpenAIBackend
    from recbole_reaseq.knowledge.cache import AnswerCache

    base = f"http://127.0.0.1:{port}"
    cache = AnswerCache(cache_path) if cache_mode != "none" else None
    try:
        backend = OpenAIBackend(f"{base}/d{delay_ms:g}/v1", "fake-llm", api_key=None, cache=cache,
                                max_concurrency=concurrency, timeout=30.0, max_retries=0,
                                max_reasks=0)
        _http(f"{base}/reset", b"{}")
        before = _http(f"{base}/stats")
        cpu0, t0 = time.process_time(), time.perf_counter()
        if api == "map":
            records = backend.map(requests)
        else:
            records = [backend.complete_json(r.agent, r.prompt, r.schema_layer,
                                             prompt_version=r.prompt_version,
                                             request_id=r.request_id) for r in requests]
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        after = _http(f"{base}/stats")
        usage = backend.usage()
    finally:
        if cache is not None:
            cache.close()
    n = len(requests)
    for req, rec in zip(requests, records):
        assert rec["answer"]["item_id"] in req.prompt, "answer for the wrong item"
    cached = sum(1 for r in records if r["cached"])
    server_reqs = after["requests"] - before["requests"]
    busy = after["busy_s"] - before["busy_s"]
    if cache_mode == "warm":
        assert usage["http_requests"] == 0 and server_reqs == 0 and cached == n, \
            f"warm cache made HTTP requests: backend {usage['http_requests']}, server {server_reqs}"
    else:
        assert usage["http_requests"] == n == server_reqs and cached == 0, (usage, server_reqs)
    overhead = (wall * concurrency - busy) / n
    server_per_req = busy / n
    return {
        "delay_ms": delay_ms, "concurrency": concurrency, "api": api, "cache": cache_mode, "n": n,
        "http_requests": usage["http_requests"], "server_requests": server_reqs,
        "cache_hits": usage["cache_hits"], "max_in_flight": after["max_in_flight"] if server_reqs else 0,
        "wall_s": wall, "req_per_s": n / wall,
        "server_busy_s": busy, "server_ms_per_req": 1000 * server_per_req,
        "server_sleep_ms_per_req": 1000 * (after["sleep_s"] - before["sleep_s"]) / n,
        "server_cpu_ms_per_req": 1000 * (after["cpu_s"] - before["cpu_s"]) / n,
        "overhead_ms_per_req": 1000 * overhead,
        "client_cpu_ms_per_req": 1000 * cpu / n,
        "overhead_vs_server": (overhead / server_per_req) if server_per_req > 0 else None,
        "overhead_vs_1s_llm": overhead / REALISTIC_LLM_S,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=320,
                    help="requests per run (a multiple of the largest concurrency is fairest)")
    ap.add_argument("--delays_ms", default="0,20,100")
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--warmup", type=int, default=16, help="unrecorded requests before the runs")
    ap.add_argument("--cache_dir", default="artifacts/llm_client_overhead")
    ap.add_argument("--out_dir", default=str(REPO_ROOT / "benchmarks" / "results"))
    args = ap.parse_args()
    if args.serve:
        return serve()

    sys.path.insert(0, str(REPO_ROOT))
    from importlib import metadata

    import recbole_reaseq

    delays = [float(x) for x in args.delays_ms.split(",")]
    concs = [int(x) for x in args.concurrency.split(",")]
    cache_dir = Path(args.cache_dir)
    if not cache_dir.is_absolute():
        cache_dir = REPO_ROOT / cache_dir
    if cache_dir.exists():  # our own benchmark folder: start empty
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True)

    server = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve"],
                              stdout=subprocess.PIPE, text=True)
    rows: List[Dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        port = int(server.stdout.readline())
        print(f"fake server (pid {server.pid}) on 127.0.0.1:{port}", flush=True)
        seq = 0

        def go(delay: float, conc: int, api: str, cache_mode: str, reqs=None, path=None):
            nonlocal seq
            if reqs is None:
                seq += 1
                reqs = make_requests(args.n, f"R{seq:02d}I")
                path = cache_dir / f"run{seq:02d}.jsonl"
            row = run_once(port=port, delay_ms=delay, concurrency=conc, api=api,
                           cache_mode=cache_mode, requests=reqs, cache_path=path)
            rows.append(row)
            print(f"delay {delay:g} ms c={conc} {api:13s} cache {cache_mode:5s}: wall "
                  f"{row['wall_s']:.3f}s, {row['req_per_s']:.1f} req/s, server "
                  f"{row['server_ms_per_req']:.2f} ms/req, overhead "
                  f"{row['overhead_ms_per_req']:.2f} ms/req, client CPU "
                  f"{row['client_cpu_ms_per_req']:.2f} ms/req", flush=True)
            return reqs, path

        # warm-up: imports, jsonschema, first connections (not recorded)
        run_once(port=port, delay_ms=0, concurrency=max(concs), api="map", cache_mode="fresh",
                 requests=make_requests(args.warmup, "W"), cache_path=cache_dir / "warmup.jsonl")
        for delay in delays:
            for conc in concs:
                reqs, path = go(delay, conc, "map", "fresh")
                go(delay, conc, "map", "warm", reqs, path)
        for conc in concs:
            go(0.0, conc, "map", "none")
        go(0.0, 1, "complete_json", "fresh")
    finally:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
    total = time.perf_counter() - t_start

    versions = {"python": sys.version.split()[0], "recbole_reaseq": recbole_reaseq.__version__}
    for dist in ("jsonschema", "recbole"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    machine = {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(),
               "platform": platform.platform(), "load_avg_at_end": os.getloadavg(),
               "niceness": os.nice(0)}
    command = "nice -n 10 " + " ".join(
        [".venv/bin/python" if sys.executable.endswith(".venv/bin/python") else "python",
         "benchmarks/llm_client_overhead.py"] + sys.argv[1:])
    config = {"n": args.n, "delays_ms": delays, "concurrency": concs, "warmup": args.warmup,
              "backend": "OpenAIBackend(max_retries=0, max_reasks=0, timeout=30)",
              "cache_dir": str(cache_dir.relative_to(REPO_ROOT)) if cache_dir.is_relative_to(
                  REPO_ROOT) else str(cache_dir),
              "prompt": "l3_item (rendered, ~%d chars)" % len(make_requests(1, "X")[0].prompt),
              "realistic_llm_latency_s": REALISTIC_LLM_S}

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(out / "llm_client_overhead.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields + ["logical_cores", "cpu_model"],
                                lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: (round(v, 6) if isinstance(v, float) else
                                    ("" if v is None else v)) for k, v in r.items()},
                             "logical_cores": machine["logical_cores"],
                             "cpu_model": machine["cpu_model"]})

    def ratio(x):
        return "n/a" if x is None else (f"{x:.4f}" if x < 10 else f"{x:.1f}")

    load = tuple(round(x, 2) for x in machine["load_avg_at_end"])
    busy_note = (" (above the core count: other processes shared the CPU, which inflates the "
                 "client numbers)" if load[0] > (machine["logical_cores"] or 1) else "")
    fresh = [r for r in rows if r["cache"] == "fresh" and r["api"] == "map"]
    worst = max(fresh, key=lambda r: r["overhead_ms_per_req"])
    slow = [r for r in fresh if r["delay_ms"] == max(delays)]
    lines = [
        "# OpenAI backend: client overhead against a local fake LLM server",
        "",
        f"Produced by `{command}` (total {total:.1f} s). The fake OpenAI-compatible server runs in "
        "its own process on 127.0.0.1 and answers every request with a schema-valid L3 answer "
        "after a fixed delay; the client is `OpenAIBackend` (public `map` / `complete_json`), "
        f"N = {args.n} distinct rendered `l3_item` prompts per run, a fresh answer cache per run "
        "(`warm` = the same requests again with that cache reopened).",
        "",
        "## Definitions",
        "",
        "- **wall**: `perf_counter` around `backend.map(requests)` (or the `complete_json` loop).",
        "- **server ms/req**: server busy time / N, where server busy time = sum over requests of "
        "the handler time measured *in the server* (start of `do_POST` to the flushed reply, delay "
        "included). `server CPU ms/req` is the server process's CPU time / N.",
        "- **overhead ms/req** = (wall x concurrency - server busy time) / N: request-slot time "
        "not spent in the server handler (client Python incl. cache key, JSON, urllib, schema "
        "validation and the fsync-ed cache append; TCP connect/accept and header parsing; thread/GIL "
        "scheduling; idle slots at batch start and end). At concurrency 1 it is exactly mean "
        "latency minus mean server time; at 8 it is an upper bound. For `warm` rows (no HTTP) it "
        "is wall x concurrency / N.",
        "- **client CPU ms/req**: CPU time (user + system, all threads) of the client process / N.",
        "- **overhead / server**: overhead ms/req / server ms/req; **overhead / 1 s LLM**: "
        "overhead ms/req / 1000 ms, the fraction added to a realistic ~1 s LLM call.",
        "",
        "| delay (ms) | conc. | API | cache | HTTP req. | wall (s) | req/s | server ms/req | "
        "overhead ms/req | client CPU ms/req | overhead / server | overhead / 1 s LLM |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ] + [f"| {r['delay_ms']:g} | {r['concurrency']} | {r['api']} | {r['cache']} | "
         f"{r['http_requests']} | {r['wall_s']:.3f} | {r['req_per_s']:.1f} | "
         f"{r['server_ms_per_req']:.2f} | {r['overhead_ms_per_req']:.2f} | "
         f"{r['client_cpu_ms_per_req']:.2f} | {ratio(r['overhead_vs_server'])} | "
         f"{r['overhead_vs_1s_llm']:.4f} |" for r in rows] + [
        "",
        "## Reading",
        "",
        "- The 0 ms rows are the pure client + loopback HTTP cost per request (the server handler "
        "itself takes the `server ms/req` shown); `none` vs `fresh` at 0 ms isolates the cost "
        "of the answer cache (sha256 key + fsync-ed append).",
        "- At 0 ms and concurrency 8 the client itself is the bottleneck (the server answers "
        "faster than the client can issue requests), so the slot-time measure also counts the "
        "threads queueing for the CPU/GIL (up to c x the client CPU per request); with a real "
        "delay the slots wait on the server instead and the overhead falls back towards the "
        "client CPU per request.",
        f"- Largest fresh-cache overhead: {worst['overhead_ms_per_req']:.2f} ms/req "
        f"(delay {worst['delay_ms']:g} ms, concurrency {worst['concurrency']}), i.e. "
        f"{100 * worst['overhead_vs_1s_llm']:.2f} % of a 1 s LLM call.",
        f"- At the largest delay ({max(delays):g} ms), the overhead is "
        + ", ".join(f"{r['overhead_ms_per_req']:.2f} ms/req at c={r['concurrency']} "
                    f"({100 * r['overhead_vs_server']:.1f} % of server time, "
                    f"{100 * r['overhead_vs_1s_llm']:.2f} % of 1 s)" for r in slow) + ".",
        "- Throughput ceiling of one client process ~ 1 / client CPU per request: "
        + ", ".join(f"{1000 / r['client_cpu_ms_per_req']:.0f} req/s (delay {r['delay_ms']:g} ms, "
                    f"c={r['concurrency']})" for r in fresh if r['client_cpu_ms_per_req'] > 0)
        + "; with 1 s LLM latency, concurrency c gives at most c req/s, so the client is not the "
        "bottleneck until c approaches that ceiling.",
        "- Server `max_in_flight` per row (CSV) confirms the concurrency reached: "
        + ", ".join(f"c={r['concurrency']}@{r['delay_ms']:g}ms: {r['max_in_flight']}"
                    for r in fresh) + ".",
        "",
        "## Machine, versions, configuration",
        "",
        f"- CPU: {machine['cpu_model']}, {machine['logical_cores']} logical cores "
        f"({machine['platform']}); niceness {machine['niceness']}; load average at the end "
        f"{load}{busy_note}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- config: `" + json.dumps(config, sort_keys=True) + "`",
        "",
    ]
    (out / "llm_client_overhead.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out / 'llm_client_overhead.md'} and {out / 'llm_client_overhead.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
