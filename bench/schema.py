"""Schemathesis against the OpenAPI schemas of the router and of a family server alone: no 5xx.

    .venv/bin/python -m bench.schema [--max-examples 50] [--servers router family] [--seed 1]
                                     [--workers 1] [--request-timeout 60] [--max-seconds 600]

Starts (a) `servers/router.py` on a registry of the bundled tiny.en alone and (b) a standalone
`servers/faster_whisper.py` (the bundled tiny.en), and runs the `schemathesis` CLI (the test extra's)
against each one's /openapi.json: every operation, positive and negative data (multipart forms for the
audio routes, random path parameters for /api/ps/{model} and /api/pull/{model}: those only 404 here, or
fail fast as the hub cannot be reached), at most --max-examples cases per operation and phase, with the
`not_a_server_error` check alone. Random model names and random bytes stop most audio requests at the
first check (404, 400), so a `before_call` hook (this module, loaded by the CLI through
SCHEMATHESIS_HOOKS) gives one audio request in three a model the server serves and one in three also a
real 1.5 s clip, the other fields left as generated: those reach decoding and the model. Each request
is tagged with its variant in x-request-id (`schema-N-generated`, `-model`, `-audio`), which the
servers' logs show. Every request and answer is recorded in a HAR file (in
.cache/bench/schema/), from which the report counts, per server, the operations tested, the requests
sent and the answers with status >= 500 (target: 0), and lists each of these (method, path, status,
a body excerpt) and each request that got no answer at all. The servers' logs are in .cache/logs/.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from tests.helpers import CACHE, REPO, TINY_EN, ServerProcess, corpus, write_registry

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
OUTPUT = CACHE / "bench" / "schema"
AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
VARIANTS = ("generated", "model", "audio")  # as generated; a served model; a served model and real audio
MODELS_ENV = "BENCH_SCHEMA_MODELS"  # the served model ids, comma-separated, for the hook
AUDIO_ENV = "BENCH_SCHEMA_AUDIO"  # the clip the hook sends


def register_hooks() -> None:
    """In the schemathesis process: the `before_call` hook described above."""
    import schemathesis

    models = os.environ[MODELS_ENV].split(",")
    audio = Path(os.environ[AUDIO_ENV]).read_bytes()
    counter = itertools.count()

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        if case.operation.path not in AUDIO_ROUTES:
            return
        n = next(counter)
        variant = VARIANTS[n % len(VARIANTS)]
        if isinstance(case.body, dict) and variant != "generated":
            case.body["model"] = models[n // len(VARIANTS) % len(models)]
            if variant == "audio":
                case.body["file"] = audio
        else:
            variant = "generated"
        case.headers = {**(case.headers or {}), "x-request-id": f"schema-{n}-{variant}"}


if os.environ.get(MODELS_ENV):  # imported by the schemathesis CLI as its hooks module
    register_hooks()


@dataclass
class Result:
    name: str
    operations: list[tuple[str, str]]  # (method, path template) in the schema
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    tested: set[tuple[str, str]] = field(default_factory=set)
    variants: dict[str, Counter[int]] = field(default_factory=dict)  # audio routes: statuses by variant
    server_errors: list[str] = field(default_factory=list)
    no_answer: list[str] = field(default_factory=list)
    exit_code: int | None = None
    seconds: float = 0.0
    summary: str = ""


def operations(schema: dict) -> list[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return [(m.upper(), path) for path, item in schema.get("paths", {}).items() for m in item if m in methods]


def template_of(method: str, path: str, known: list[tuple[str, str]]) -> tuple[str, str]:
    """The schema operation a request was made for: its path matched against the templates."""
    for op_method, template in known:
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]*", re.escape(template)) + "$"
        if op_method == method and re.match(pattern, path):
            return op_method, template
    return method, path


def excerpt(text: str | None, size: int = 200) -> str:
    return " ".join((text or "").split())[:size]


def run_schemathesis(name: str, server: ServerProcess, args: argparse.Namespace) -> Result:
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    models = [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]]
    clip = min(corpus("dev"), key=lambda c: c.duration)
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "bench.schema",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        MODELS_ENV: ",".join(models),
        AUDIO_ENV: str(clip.path),
    }
    result = Result(name, operations(schema))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    har = OUTPUT / f"{name}.har"
    log = OUTPUT / f"{name}.log"
    har.unlink(missing_ok=True)
    command = [
        str(SCHEMATHESIS),
        "run",
        server.url + "/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(args.max_examples),
        "--workers",
        str(args.workers),
        "--seed",
        str(args.seed),
        "--request-timeout",
        f"{args.request_timeout:g}",
        "--suppress-health-check",
        "all",
        "--generation-database",
        "none",
        "--continue-on-failure",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--no-color",
    ]
    print(f"\n{name}: {' '.join(command[:3])} ... (output: {log})", flush=True)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as folder, log.open("w") as out:  # whatever it leaves in its cwd goes
        try:
            done = subprocess.run(
                command, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=args.max_seconds
            )
            result.exit_code = done.returncode
        except subprocess.TimeoutExpired:
            result.exit_code = None
    result.seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    summary = text[text.rfind("SUMMARY") :] if "SUMMARY" in text else text[-1500:]
    result.summary = summary.strip()
    if har.exists():
        read_har(result, json.loads(har.read_text()))
    return result


def read_har(result: Result, har: dict) -> None:
    for entry in har["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        method, url = request["method"], urlparse(request["url"])
        operation = template_of(method, url.path, result.operations)
        result.tested.add(operation)
        result.requests += 1
        status = response["status"]
        result.statuses[status] += 1
        shown = f"{method} {url.path}{'?' + url.query if url.query else ''}"
        tag = next((h["value"] for h in request["headers"] if h["name"].lower() == "x-request-id"), "")
        if operation[1] in AUDIO_ROUTES:
            variant = tag.rsplit("-", 1)[-1] if tag.startswith("schema-") else "generated"
            result.variants.setdefault(variant, Counter())[status] += 1
            shown += f" [x-request-id {tag}]" if tag else ""
        if status >= 500:
            body = excerpt((request.get("postData") or {}).get("text"), 160)
            result.server_errors.append(
                f"{shown} ({operation[1]}): {status} {excerpt(response['content'].get('text'))} | request body: {body}"
            )
        elif status == 0:
            result.no_answer.append(f"{shown} ({operation[1]}): no response")


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\n### Schemathesis, not_a_server_error, --max-examples {args.max_examples}, seed {args.seed}\n")
    print("| server | operations in schema | operations tested | requests | status >= 500 | no answer | time (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        tested = len(r.tested & set(r.operations))
        print(
            f"| {r.name} | {len(r.operations)} | {tested} | {r.requests} | {len(r.server_errors)} | "
            f"{len(r.no_answer)} | {r.seconds:.0f} |"
        )
    print("\n| server | statuses answered |")
    print("|---|---|")
    for r in results:
        print(f"| {r.name} | {', '.join(f'{s}: {n}' for s, n in sorted(r.statuses.items()))} |")
    print("\n| server | audio routes: request variant | requests | statuses answered |")
    print("|---|---|---|---|")
    for r in results:
        for variant in VARIANTS:
            statuses = r.variants.get(variant, Counter())
            answered = ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))
            print(f"| {r.name} | {variant} | {sum(statuses.values())} | {answered} |")
    for r in results:
        untested = [f"{m} {p}" for m, p in r.operations if (m, p) not in r.tested]
        if untested:
            print(f"\n{r.name}: operations without a request: {', '.join(untested)}")
        if r.exit_code is None:
            print(f"\n{r.name}: schemathesis did not finish within {args.max_seconds:g} s (killed)")
        if r.server_errors:
            print(f"\n**{r.name}: {len(r.server_errors)} answers with status >= 500**\n")
            for line in r.server_errors:
                print(f"- {line}")
        if r.no_answer:
            print(f"\n**{r.name}: {len(r.no_answer)} requests without an answer**\n")
            for line in r.no_answer[:20]:
                print(f"- {line}")
        if r.server_errors or r.no_answer or r.exit_code not in (0,):
            print(f"\n{r.name}: schemathesis exit code {r.exit_code}; its summary:\n\n{r.summary[-3000:]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=50, help="cases per operation (and phase)")
    parser.add_argument("--servers", nargs="+", choices=("router", "family"), default=["router", "family"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="schemathesis's concurrent workers")
    parser.add_argument("--request-timeout", type=float, default=60, help="seconds one request may take")
    parser.add_argument("--max-seconds", type=float, default=600, help="the longest one schemathesis run may take")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    version = subprocess.run([str(SCHEMATHESIS), "--version"], capture_output=True, text=True).stdout.strip()
    print(f"run {now}, os.cpu_count()={os.cpu_count()}, {version}; servers: {', '.join(args.servers)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.servers:
            if name == "router":
                registry = write_registry(Path(folder), TINY_EN)
                server = ServerProcess("servers/router.py", "--registry", str(registry), name="bench-schema-router")
            else:
                server = ServerProcess("servers/faster_whisper.py", name="bench-schema-family")
            with server:
                result = run_schemathesis(name, server, args)
                print(f"{name}: server log {server.log_path}", flush=True)
            results.append(result)
    report(results, args)


if __name__ == "__main__":
    main()
