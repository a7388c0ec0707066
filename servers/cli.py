"""The `open-speech` command: run the server, or use one from the shell.

    open-speech serve [--port 9000 ...]       the router in the foreground (its options, as servers/router.py)
    open-speech transcribe FILE... [options]  transcribe (or --translate) files, in any response format
    open-speech pull MODEL                    download a model's weights, with a progress bar
    open-speech ps | models [--json]          loaded models, or every model of the registry

Client commands talk to the server at --url (OPEN_SPEECH_URL, default http://127.0.0.1:8000) and send
--api-key (OPEN_SPEECH_API_KEY) as a bearer token. When nothing answers at a URL on this machine, they start
a router in the background on a free port for the command, stop it afterwards, and say so on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tqdm import tqdm

from common.formats import RESPONSE_FORMATS
from router.supervisor import free_port, until_healthy

DEFAULT_URL = "http://127.0.0.1:8000"
EXTENSIONS = {
    "json": ".json",
    "verbose_json": ".json",
    "diarized_json": ".json",
    "text": ".txt",
    "srt": ".srt",
    "vtt": ".vtt",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
START_TIMEOUT = 300.0  # seconds for a background router to answer /health
# No read limit: a long file takes as long as it takes; a server that is not there fails at connect.
TIMEOUT = httpx.Timeout(None, connect=10)


class CliError(Exception):
    """A failure reported as one line on stderr, with exit status 1."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        return serve(argv[1:])
    args = _parser().parse_args(argv)
    try:
        with _client(args) as client:
            return args.run(client, args)
    except CliError as error:
        print(f"open-speech: {error}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:  # the connection failed mid-way: the server went away
        print(f"open-speech: {args.url}: {error!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="open-speech", description="A self-hosted OpenAI-compatible speech server.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # `serve` is dispatched before parsing (its options are the router's); listed here for --help.
    commands.add_parser("serve", help="run the router in the foreground; `serve --help` lists its options")

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", default=os.environ.get("OPEN_SPEECH_URL", DEFAULT_URL), help="%(default)s")
    server.add_argument("--api-key", default=os.environ.get("OPEN_SPEECH_API_KEY", ""), help="OPEN_SPEECH_API_KEY")
    server.add_argument("--no-start", action="store_true", help="fail rather than start a router when none answers")

    command = commands.add_parser("transcribe", parents=[server], help="transcribe audio files")
    command.add_argument("files", nargs="+", type=Path, metavar="FILE")
    command.add_argument("--model", default=os.environ.get("OPEN_SPEECH_MODEL", "whisper-1"), help="%(default)s")
    command.add_argument("--language", help="ISO-639-1 code of the spoken language (default: detected)")
    command.add_argument("--prompt", help="text to guide style or vocabulary")
    command.add_argument("--temperature", type=float, help="0 to 1 (default: Whisper's fallback schedule)")
    command.add_argument("--response-format", choices=RESPONSE_FORMATS, default="text", help="%(default)s")
    command.add_argument("--timestamp-granularities", type=_granularities, default=[], help="word,segment")
    command.add_argument("--translate", action="store_true", help="translate into English")
    command.add_argument("--output-dir", type=Path, help="write FILE's stem + the format's extension there")
    command.add_argument("--stream", action="store_true", help="print text as it is decoded")
    command.add_argument(
        "--diarize", action="store_true", help="who spoke: `A: text` lines, or speakers in the chosen format"
    )
    command.set_defaults(run=transcribe)

    command = commands.add_parser("pull", parents=[server], help="download a model's weights")
    command.add_argument("model", help="a registry model id, or any owner/name Hugging Face repository")
    command.set_defaults(run=pull)

    for name, run, what in (("ps", ps, "loaded models"), ("models", models, "every model the server knows")):
        command = commands.add_parser(name, parents=[server], help=what)
        command.add_argument("--json", action="store_true", help="print the server's JSON")
        command.set_defaults(run=run)
    return parser


def _granularities(value: str) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if not chosen or set(chosen) - {"word", "segment"}:
        raise argparse.ArgumentTypeError("expected word, segment or word,segment")
    return chosen


# ---- serve and the server to talk to ---------------------------------------------------------
def serve(argv: list[str]) -> int:
    """The router in the foreground, as `python servers/router.py` with these options."""
    from servers import router  # the server's imports are heavy; client commands do without them

    router.main(argv)
    return 0


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[httpx.Client]:
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    with ExitStack() as stack:
        if not _answers(url):
            if args.no_start or urlsplit(url).hostname not in LOOPBACK:
                raise CliError(f"no server answers at {url}")
            url = stack.enter_context(_background_router(url, args.api_key))
        yield stack.enter_context(httpx.Client(base_url=url, headers=headers, timeout=TIMEOUT))


def _answers(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=10)
    except httpx.ConnectError:
        return False
    except httpx.HTTPError as error:
        raise CliError(f"the server at {url} does not answer properly: {error!r}") from None
    return True


@contextmanager
def _background_router(url: str, api_key: str) -> Iterator[str]:
    """A router on a free port of 127.0.0.1 for the duration of one command (models load on first use)."""
    port = free_port()
    started = f"http://127.0.0.1:{port}"
    print(f"open-speech: no server at {url}; starting one at {started} for this command", file=sys.stderr)
    command = [sys.executable, "-m", "servers.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--preload-default", "false", "--load-on-request", "wait"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            command,
            env={**os.environ, "OPEN_SPEECH_API_KEY": api_key},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the terminal's Ctrl-C reaches only us; we stop it in order
        )
        try:
            try:
                healthy = asyncio.run(
                    asyncio.wait_for(until_healthy(started, lambda: process.poll() is None), START_TIMEOUT)
                )
            except TimeoutError:
                raise CliError(f"the router started at {started} did not answer within {START_TIMEOUT:.0f} s") from None
            if not healthy:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise CliError(f"the router exited with status {process.returncode}:\n{tail}")
            yield started
        finally:
            _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the router stops its model servers, then exits."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _check(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded; else the server's (OpenAI-shaped) error message as a CliError."""
    if response.is_success:
        return response
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text.strip() or response.reason_phrase
    raise CliError(f"{message} (HTTP {response.status_code})")


# ---- transcribe ------------------------------------------------------------------------------
def transcribe(client: httpx.Client, args: argparse.Namespace) -> int:
    """Each file in turn; a file that fails is reported and the others go on (exit status 1 then)."""
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise CliError(f"no such file: {', '.join(missing)}")
    if args.stream and (args.output_dir or args.response_format != "text"):
        raise CliError("--stream prints text as it is decoded: use it without --output-dir and --response-format")
    targets = {}
    if args.output_dir:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        targets = {path: args.output_dir / (path.stem + EXTENSIONS[args.response_format]) for path in args.files}
        if len(set(targets.values())) < len(targets):
            raise CliError("two input files have the same name: their outputs would overwrite each other")
    failed = 0
    # A bar for several files, on a terminal only (disable=None); never over streamed text.
    several = len(args.files) > 1
    with tqdm(total=len(args.files), unit="file", disable=None if several and not args.stream else True) as bar:
        for path in args.files:
            bar.set_description(path.name)
            try:
                if args.stream:
                    _stream(client, path, args, header=several)
                    continue
                body = _request(client, path, args)
            except CliError as error:
                failed += 1
                bar.write(f"open-speech: {path}: {error}", file=sys.stderr)
                continue
            finally:
                bar.update(1)
            if path in targets:
                targets[path].write_text(body, encoding="utf-8")
            else:
                bar.write(f"==> {path} <==\n{body}" if several else body, file=sys.stdout, end="")
    return 1 if failed else 0


def _form(args: argparse.Namespace) -> dict[str, Any]:
    fields = {
        "model": args.model,
        "response_format": _wire_format(args),
        "diarize": "true" if args.diarize and args.response_format in ("verbose_json", "srt", "vtt") else None,
        "language": args.language,
        "prompt": args.prompt,
        "temperature": None if args.temperature is None else str(args.temperature),
        "timestamp_granularities[]": args.timestamp_granularities or None,
        "stream": "true" if args.stream else None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _wire_format(args: argparse.Namespace) -> str:
    """The response_format asked of the server: with --diarize, text and json come from diarized_json."""
    return "diarized_json" if args.diarize and args.response_format in ("text", "json") else args.response_format


def _send(client: httpx.Client, path: Path, args: argparse.Namespace) -> httpx.Response:
    """POST one file; the response comes back checked, its body not read yet."""
    with path.open("rb") as audio:
        files = {"file": (path.name, audio, mimetypes.guess_type(path.name)[0] or "application/octet-stream")}
        route = "/v1/audio/translations" if args.translate else "/v1/audio/transcriptions"
        response = client.send(client.build_request("POST", route, files=files, data=_form(args)), stream=True)
    return _check(response)


def _request(client: httpx.Client, path: Path, args: argparse.Namespace) -> str:
    """One file's transcript in the chosen format, as text ending in a newline."""
    response = _send(client, path, args)
    response.read()
    if args.diarize and args.response_format == "text":
        return "".join(_speaker_lines(response.json()["segments"]))
    if args.response_format in ("json", "verbose_json", "diarized_json"):
        return json.dumps(response.json(), indent=2, ensure_ascii=False) + "\n"
    return response.text if response.text.endswith("\n") else response.text + "\n"


def _stream(client: httpx.Client, path: Path, args: argparse.Namespace, header: bool) -> None:
    """Print `transcript.text.delta` events as they arrive (stream=true), then a newline; with --diarize,
    an `A: text` line per `transcript.text.segment` event."""
    response = _send(client, path, args)
    try:
        if header:
            print(f"==> {path} <==", flush=True)
        for line in response.iter_lines():
            payload = line.removeprefix("data: ")
            if payload == line or payload == "[DONE]":
                continue
            event = json.loads(payload)
            if "error" in event:
                print(flush=True)
                raise CliError(event["error"].get("message", "the transcription failed"))
            if args.diarize and event.get("type") == "transcript.text.segment":
                print(*_speaker_lines([event]), sep="", end="", flush=True)
            elif not args.diarize and event.get("type") == "transcript.text.delta":
                print(event["delta"], end="", flush=True)
        if not args.diarize:
            print()
    finally:
        response.close()


def _speaker_lines(segments: list[dict[str, Any]]) -> Iterator[str]:
    """`speaker: text` lines from diarized segments, one per turn (a speaker's segments in a row joined)."""
    turns: list[tuple[str, list[str]]] = []
    for segment in segments:
        if turns and turns[-1][0] == segment["speaker"]:
            turns[-1][1].append(segment["text"])
        else:
            turns.append((segment["speaker"], [segment["text"]]))
    for speaker, texts in turns:
        yield f"{speaker}: {' '.join(texts)}\n"


# ---- pull, ps, models ------------------------------------------------------------------------
def pull(client: httpx.Client, args: argparse.Namespace) -> int:
    """Print the pull's status lines; its byte progress as a bar on a terminal."""
    bar: tqdm | None = None
    try:
        with client.stream("POST", f"/api/pull/{args.model}") as response:
            _check(response)
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                status = event.get("status", "")
                if status == "error":
                    raise CliError(f"{event.get('error', 'the pull failed')} (HTTP {event.get('code', 502)})")
                if "total" in event:
                    if bar is None:
                        bar = tqdm(total=event["total"], unit="B", unit_scale=True, unit_divisor=1024, disable=None)
                    bar.set_description(status.removeprefix("downloading "), refresh=False)
                    bar.update(event["completed"] - bar.n)
                    continue
                if bar is not None:
                    bar.close()
                    bar = None
                print(status, flush=True)
                if status == "success":
                    return 0
    finally:
        if bar is not None:
            bar.close()
    raise CliError("the server ended the pull before it finished")


PS_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("MODEL", lambda m: m["id"]),
    ("FAMILY", lambda m: m.get("family", "")),
    ("DEVICE", lambda m: m.get("device", "")),
    ("MEMORY", lambda m: f"{m['memory'] / 2**20:.0f} MiB" if m.get("memory") else "-"),
    ("PID", lambda m: m.get("pid") or "-"),
    ("PORT", lambda m: m.get("port") or "-"),
    ("IN FLIGHT", lambda m: m.get("in_flight", 0)),
    ("LOADED", lambda m: m.get("loaded_at", "")),
    ("UNLOADS", lambda m: m.get("expires_at") or "never"),
]
MODELS_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("MODEL", lambda m: m["id"]),
    ("FAMILY", lambda m: m.get("family", "")),
    ("ALIASES", lambda m: ",".join(m.get("aliases", []))),
    ("DOWNLOADED", lambda m: _yes(m.get("downloaded"))),
    ("LOADED", lambda m: _yes(m.get("loaded"))),
    ("SOURCE", lambda m: m.get("source", "")),
]


def ps(client: httpx.Client, args: argparse.Namespace) -> int:
    return _listing(client, args, "/api/ps", "models", PS_COLUMNS)


def models(client: httpx.Client, args: argparse.Namespace) -> int:
    """One row per model, its aliases in a column (/v1/models lists them as ids of their own too)."""
    return _listing(client, args, "/v1/models", "data", MODELS_COLUMNS, lambda m: m.get("root", m["id"]) == m["id"])


def _listing(
    client: httpx.Client,
    args: argparse.Namespace,
    route: str,
    key: str,
    columns: list[tuple[str, Callable[[dict[str, Any]], Any]]],
    shown: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> int:
    """The server's JSON at `route` (--json), or the `shown` items of its `key` list as a table."""
    listed = _check(client.get(route)).json()
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    rows = [[cell(model) for _, cell in columns] for model in listed[key] if shown(model)]
    print(_table([header for header, _ in columns], rows))
    return 0


def _yes(value: Any) -> str:
    return "yes" if value else "no"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart."""
    cells = [headers, *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells)


if __name__ == "__main__":
    sys.exit(main())
