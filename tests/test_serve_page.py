"""The inspection page in headless Chromium (Debian's, driven by Playwright) against a real
server: upload two images, see two results, move the threshold slider, see the decision change.
A screenshot is written to $REFAD_ARTIFACTS (or the test's tmp folder) for a human to look at."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_serve_support import artifacts_dir, demo_images, live_server, tiny_run, torch_factory

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory):
    demo, run = tiny_run(tmp_path_factory)
    with live_server(torch_factory(run)) as s:
        s.demo = demo
        yield s


@pytest.fixture(scope="module")
def browser():
    # Not a skip: CI must install Debian's chromium (apt-get install chromium).
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} not found: the page test needs Debian's chromium (apt-get install chromium)"
    )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield b
        b.close()


def verdicts(page) -> list[str]:
    return page.locator("[data-testid=result]").evaluate_all(
        "cards => cards.map(c => c.dataset.verdict)")


def test_upload_two_images_and_move_the_threshold(page_server, browser, tmp_path):
    good, bad = demo_images(page_server.demo)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(page_server.url + "/")
    # functions, not expressions: Playwright polls an expression with eval, which the page's
    # CSP refuses; a condition not yet true at the first check failed (seen on a busy machine)
    page.wait_for_function("() => document.querySelector('#category').options.length > 1")
    assert "RLR on tf_efficientnet_lite0" in page.locator("#model-summary").inner_text()
    page.select_option("#category", "fabric")
    page.set_input_files("[data-testid=file-input]", [str(good), str(bad)])
    cards = page.locator("[data-testid=result]")
    cards.nth(1).wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=result]')]"
        ".every(c => c.dataset.verdict)")
    assert cards.count() == 2
    assert all(v in ("normal", "anomalous") for v in verdicts(page))
    assert "fabric" in page.locator("#thresholds").inner_text()
    assert page.locator(".heat").count() == 2

    slider = page.locator("[data-testid=threshold]")
    assert slider.count() == 1
    # the server refuses a threshold of 0 (it flags every image): the slider stops above it
    assert float(slider.get_attribute("min")) > 0
    slider.fill("0")  # clamped to its lowest: below every score, everything is anomalous
    assert verdicts(page) == ["anomalous", "anomalous"]
    assert page.locator(".badge.anomalous").count() == 2
    slider.fill(slider.get_attribute("max"))  # above every score: everything is normal
    assert verdicts(page) == ["normal", "normal"]
    assert "set on this page" in cards.first.inner_text()
    page.locator(".reset").click()  # back to the calibrated threshold

    page.locator("#opacity").fill("80")
    opacity = page.locator(".heat").first.evaluate("e => e.style.opacity")
    assert opacity == "0.8"
    page.locator("#model-card summary").click()
    assert "refad version" in page.locator("#model-fields").inner_text()

    out = artifacts_dir(tmp_path)
    page.screenshot(path=str(out / "serve_page.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"page scrolls sideways on a narrow screen ({width} px)"
    card_box = cards.first.bounding_box()
    assert card_box is not None and card_box["width"] <= 390
    page.screenshot(path=str(out / "serve_page_narrow.png"), full_page=True)
    assert not problems, problems
    page.close()
    if out != tmp_path:
        shutil.copy(out / "serve_page.png", tmp_path / "serve_page.png")


def test_one_bad_file_fails_only_itself(page_server, browser, tmp_path):
    """The server refuses a whole request for one bad file: every good image sent with it
    showed that file's error, and an empty file vanished without a word."""
    good, bad = demo_images(page_server.demo)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    page = browser.new_page()
    page.goto(page_server.url + "/")
    page.wait_for_function("() => document.querySelector('#category').options.length > 1")
    page.set_input_files("[data-testid=file-input]", [str(good), str(notes), str(bad),
                                                       str(empty)])
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=result]').length === 4"
        " && !document.querySelector('.card.pending')")
    cards = page.locator("[data-testid=result]")
    texts = [cards.nth(i).inner_text() for i in range(4)]
    assert "error" not in (cards.nth(0).get_attribute("class") or "")
    assert "error" not in (cards.nth(2).get_attribute("class") or "")
    assert "notes.txt: not an image" in texts[1] and good.name not in texts[1]
    assert "empty.png: empty file" in texts[3]
    assert "Scored 2 image(s), 2 failed." in page.locator("#status").inner_text()
    page.close()
