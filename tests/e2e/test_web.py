"""The web page at `/`, in real headless Chromium (Debian's, driven by Playwright) against a real router.

The router has an API key, so the page is tested as a browser meets it: the page loads without the key, the
user types it, and it goes to the HTTP API as a bearer token and to the Realtime WebSocket as a subprotocol.
The live view hears real speech: Chromium's fake microphone plays a corpus clip (and loops it).

With OPEN_SPEECH_SCREENSHOTS=<folder> the tests save screenshots of the upload and live views there (the
README's are made with `OPEN_SPEECH_SCREENSHOTS=docs`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from servers.faster_whisper import model_path
from tests.helpers import (
    DIARIZER,
    HUB_REPO,
    PULLED_TINY,
    TINY_EN,
    ServerProcess,
    convert,
    corpus,
    hub_env,
    normalize,
    wer,
    write_registry,
)
from tests.hub_standin import HubStandin

API_KEY = "sk-web-test"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CLIP = next(c for c in corpus("dev") if c.id == "2412-153948-0001")  # 10.5 s, one sentence
LONG = next(c for c in corpus("long") if "multispeaker" in c.path.name)
WAIT_MS = 120_000  # how long to wait for a transcript before calling it a hang

TINY_GREEDY = {"id": "tiny-greedy", "family": "faster-whisper", "source": "bundled", "options": {"beam_size": 1}}

# Records every pull progress bar the page draws, as [value, max], into window.progress.
RECORD_PROGRESS = """
window.progress = [];
new MutationObserver((mutations) => {
  for (const m of mutations) for (const node of m.addedNodes) {
    const bar = node.querySelector?.("progress");
    if (bar) window.progress.push([bar.value, bar.max]);
  }
}).observe(document.querySelector("#models-table tbody"), { childList: true, subtree: true });
"""


@pytest.fixture(scope="module")
def hub() -> Iterator[HubStandin]:
    # Slowed down so that a pull takes about two seconds: long enough for the bar to move.
    with HubStandin({HUB_REPO: model_path("bundled")}, bytes_per_second=40e6) as standin:
        yield standin


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory, hub: HubStandin) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("web")
    registry = write_registry(
        folder, TINY_EN, {**TINY_GREEDY, "languages": ["en"]}, PULLED_TINY, DIARIZER, diarizer="diarizer"
    )
    hf = hub_env(folder, hub.url)
    args = ("--registry", str(registry), "--keep-alive", "-1", "--api-key", API_KEY)
    with ServerProcess("servers/router.py", *args, env=hf, name="router-web") as server:
        yield server


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium whose microphone plays the clip after 0.5 s of silence, then 3 s of silence, in a loop."""
    microphone = tmp_path_factory.mktemp("microphone") / "clip.wav"
    convert(
        CLIP.path, microphone, "-af", "adelay=500:all=1,apad=pad_dur=3", "-ar", "48000", "-ac", "1", "-c:a", "pcm_s16le"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, router: ServerProcess) -> Iterator[Page]:
    """A fresh browser profile that has the API key stored, as after a user typed it once."""
    context = browser.new_context(base_url=router.url, viewport={"width": 1100, "height": 400})
    context.add_init_script(f"localStorage.setItem('open-speech.api-key', {API_KEY!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def screenshot(page: Page, name: str) -> None:
    folder = os.environ.get("OPEN_SPEECH_SCREENSHOTS")
    if folder:
        page.screenshot(path=Path(folder) / name, full_page=True)


def api_transcription(router: ServerProcess, **fields: str | list[str]) -> httpx.Response:
    with CLIP.path.open("rb") as f:
        response = httpx.post(
            router.url + "/v1/audio/transcriptions",
            headers=AUTH,
            files={"file": f},
            data={"model": "tiny.en", **fields},
            timeout=120,
        )
    response.raise_for_status()
    return response


def test_the_page_loads_without_the_key_and_uses_the_one_typed(browser: Browser, router: ServerProcess) -> None:
    for path in ("/", "/web/app.js", "/web/style.css", "/web/mic-worklet.js"):
        assert httpx.get(router.url + path).status_code == 200, path
    assert httpx.get(router.url + "/v1/models").status_code == 401

    context = browser.new_context(base_url=router.url)
    page = context.new_page()
    page.goto("/")
    expect(page.get_by_role("alert")).to_contain_text("Incorrect or missing API key")
    key = page.get_by_label("API key")
    key.fill(API_KEY)
    key.press("Enter")
    key.blur()
    expect(page.get_by_role("alert")).to_be_hidden()
    upload = page.get_by_role("tabpanel", name="Upload")
    expect(upload.get_by_label("Model").locator("option")).to_have_text(
        ["tiny.en (loaded)", "tiny-greedy", "pulled-tiny"]
    )
    page.reload()
    expect(page.get_by_label("API key")).to_have_value(API_KEY)  # kept in localStorage
    context.close()


def test_upload_shows_the_transcript_with_segment_times(page: Page, router: ServerProcess) -> None:
    page.goto("/")
    upload = page.get_by_role("tabpanel", name="Upload")
    upload.get_by_label("Audio file").set_input_files(CLIP.path)
    expect(upload.get_by_label("Model")).to_have_value("tiny.en")
    upload.get_by_label("Response format").select_option("verbose_json")
    upload.get_by_role("checkbox", name="Words").check()
    upload.get_by_role("button", name="Transcribe").click()

    segments = page.get_by_role("table", name="Segments")
    expect(segments).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_role("status")).to_contain_text("Done")
    text = page.locator("#upload-text").inner_text()
    assert wer([CLIP.text], [text]) <= 0.15, text

    # The times shown are the server's segments, as m:ss.ss.
    expected = api_transcription(
        router, response_format="verbose_json", **{"timestamp_granularities[]": ["segment", "word"]}
    ).json()
    rows = [[cell.inner_text() for cell in row.get_by_role("cell").all()] for row in segments.locator("tbody tr").all()]
    assert rows == [[_clock(s["start"]), _clock(s["end"]), s["text"].strip()] for s in expected["segments"]]
    assert all(re.fullmatch(r"\d+:\d\d\.\d\d", time) for row in rows for time in row[:2])
    screenshot(page, "web-upload.png")
    page.locator("summary", has_text="Words").click()
    words = page.get_by_role("table", name="Words").locator("tbody tr")
    assert normalize(" ".join(w.inner_text().split("\t")[-1] for w in words.all())) == normalize(text)


def test_upload_with_speakers_shows_who_said_what(page: Page, tmp_path: Path) -> None:
    """Through a router with an API key: its family server asks it for the speakers with that key."""
    two_voices = tmp_path / "two-voices.wav"  # p225, then p226 from 17.1 s
    convert(LONG.path, two_voices, "-ss", "103.8", "-to", "135", "-ar", "16000", "-ac", "1")
    page.goto("/")
    upload = page.get_by_role("tabpanel", name="Upload")
    upload.get_by_label("Audio file").set_input_files(two_voices)
    upload.get_by_label("Response format").select_option("json")
    expect(upload.get_by_role("checkbox", name="Speakers")).to_be_disabled()  # json cannot say who spoke
    upload.get_by_label("Response format").select_option("verbose_json")
    upload.get_by_role("checkbox", name="Speakers").check()
    upload.get_by_role("button", name="Transcribe").click()

    segments = page.get_by_role("table", name="Segments")
    expect(segments).to_be_visible(timeout=WAIT_MS)
    expect(segments.get_by_role("columnheader", name="Speaker")).to_be_visible()
    speakers = [row.get_by_role("cell").nth(2).inner_text() for row in segments.locator("tbody tr").all()]
    assert speakers[0] == "A" and speakers[-1] == "B" and set(speakers) == {"A", "B"}, speakers


def test_upload_in_other_formats_shows_the_body(page: Page, router: ServerProcess) -> None:
    page.goto("/")
    upload = page.get_by_role("tabpanel", name="Upload")
    upload.get_by_label("Audio file").set_input_files(CLIP.path)
    upload.get_by_label("Response format").select_option("srt")
    expect(upload.get_by_role("checkbox", name="Words")).to_be_disabled()  # timestamps: verbose_json only
    upload.get_by_role("button", name="Transcribe").click()
    body = page.get_by_label("Response body")
    expect(body).to_contain_text("-->", timeout=WAIT_MS)
    assert body.inner_text().strip() == api_transcription(router, response_format="srt").text.strip()
    assert body.inner_text().startswith("1\n00:00:00,000 --> ")

    # Streamed: the text as it is decoded, ending as the whole transcript.
    upload.get_by_label("Stream text as it is decoded").check()
    upload.get_by_role("button", name="Transcribe").click()
    expect(page.get_by_role("status")).to_contain_text("Done", timeout=WAIT_MS)
    assert page.locator("#upload-text").inner_text() == api_transcription(router).json()["text"]


def test_errors_are_shown_as_the_server_words_them(page: Page, browser: Browser, router: ServerProcess) -> None:
    page.goto("/")
    page.get_by_label("Audio file").set_input_files(Path(__file__))  # not audio
    page.get_by_role("button", name="Transcribe").click()
    with Path(__file__).open("rb") as f:
        refused = httpx.post(
            router.url + "/v1/audio/transcriptions", headers=AUTH, files={"file": f}, data={"model": "tiny.en"}
        )
    assert refused.status_code == 400
    expect(page.get_by_role("alert")).to_have_text(f"Transcription failed: {refused.json()['error']['message']}")

    # A wrong key on the WebSocket: the server's error event, then its close.
    context = browser.new_context(base_url=router.url)
    context.add_init_script("localStorage.setItem('open-speech.api-key', 'sk-wrong')")
    wrong = context.new_page()
    wrong.goto("/#live")
    wrong.get_by_role("button", name="Start listening").click()
    live = wrong.get_by_role("tabpanel", name="Live")
    expect(live.get_by_role("alert")).to_have_text("Error: Incorrect or missing API key.")
    expect(live.get_by_role("button", name="Start listening")).to_be_enabled()
    context.close()


def test_live_microphone_shows_interim_text_then_the_transcript(page: Page) -> None:
    page.goto("/#live")
    live = page.get_by_role("tabpanel", name="Live")
    live.get_by_role("button", name="Start listening").click()
    lines = live.get_by_role("list", name="Live transcript").get_by_role("listitem")
    interim = lines.and_(page.locator(".interim"))
    expect(interim.first).not_to_be_empty(timeout=WAIT_MS)
    first_interim = interim.first.inner_text()

    final = lines.and_(page.locator(".final"))
    expect(final.first).not_to_be_empty(timeout=WAIT_MS)
    transcript = final.first.inner_text()
    assert wer([CLIP.text], [transcript]) <= 0.15, transcript
    assert normalize(first_interim).split()[0] == normalize(transcript).split()[0]

    # The microphone plays the clip again: a second line starts as interim text under the first.
    expect(lines.nth(1)).not_to_be_empty(timeout=WAIT_MS)
    screenshot(page, "web-live.png")
    live.get_by_role("button", name="Stop").click()
    expect(page.get_by_role("status")).to_have_text("Stopped.", timeout=WAIT_MS)
    expect(interim).to_have_count(0)  # the turn under way was committed and transcribed
    expect(live.get_by_role("button", name="Start listening")).to_be_enabled()


def test_models_load_unload_and_pull_with_progress(page: Page, router: ServerProcess, hub: HubStandin) -> None:
    page.goto("/#models")
    table = page.get_by_role("table", name="Models")

    def cell(model: str, column: int) -> Locator:
        return table.locator(f'tr[data-model="{model}"]').get_by_role("cell").nth(column)

    expect(cell("tiny.en", 3)).to_have_text("ready")
    expect(cell("tiny-greedy", 3)).to_have_text("no")

    page.get_by_role("button", name="Load tiny-greedy").click()
    expect(cell("tiny-greedy", 3)).to_have_text("ready", timeout=WAIT_MS)
    assert "tiny-greedy" in {m["id"] for m in httpx.get(router.url + "/api/ps", headers=AUTH).json()["models"]}
    page.get_by_role("button", name="Unload tiny-greedy").click()
    expect(cell("tiny-greedy", 3)).to_have_text("no", timeout=WAIT_MS)
    assert "tiny-greedy" not in {m["id"] for m in httpx.get(router.url + "/api/ps", headers=AUTH).json()["models"]}

    expect(cell("pulled-tiny", 2)).to_have_text("no")
    page.evaluate(RECORD_PROGRESS)
    page.get_by_role("button", name="Pull pulled-tiny").click()
    expect(page.get_by_role("status")).to_have_text("Pulled pulled-tiny.", timeout=WAIT_MS)
    expect(cell("pulled-tiny", 2)).to_have_text("yes")
    expect(page.get_by_role("button", name="Pull pulled-tiny")).to_have_count(0)
    total = sum(f.stat().st_size for f in Path(model_path("bundled")).iterdir())
    progress = page.evaluate("window.progress")
    assert progress[-1] == [total, total]
    assert any(0 < value < total for value, _ in progress), progress  # the bar moved along the way
    values = [value for value, _ in progress]
    assert values == sorted(values)


def _clock(seconds: float) -> str:
    """As the page shows a time: m:ss.ss."""
    hundredths = round(seconds * 100)
    return f"{hundredths // 6000}:{hundredths % 6000 / 100:05.2f}"
