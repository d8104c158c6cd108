"""imgcls serve's web page in a real headless Chromium (selenium): choosing, dropping and pasting
an image shows what POST /predict answers; a non-image, an image the server refuses and a file
over the size limit show why, the last without uploading it. One server and one browser for the
module."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from imgcls_utils.serving.app import upload_page
from imgcls_utils.serving.settings import ServeSettings
from tests.conftest import REPO_ROOT
from tests.live_server import live_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium not installed: run `make test` as root (it apt-get installs "
                "chromium chromium-driver nginx) or apt-get install chromium chromium-driver",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402 (only once the browser is known to be there)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

NAME = "digits_cnn"
# Small enough that a test file passes it cheaply, big enough for the digit PNGs.
MAX_REQUEST_MB = 0.05
SCREENSHOT = REPO_ROOT / "test-artifacts" / "web_page.png"
WAIT_SECONDS = 20


@dataclass(frozen=True)
class Digit:
    """A real digit PNG the served model gets right, and what POST /predict answers for it."""

    label: str
    path: Path
    answer: dict


@pytest.fixture(scope="module")
def server(served_model, tmp_path_factory):
    cfg, _, version_folder = served_model
    tmp = tmp_path_factory.mktemp("web_page")
    shutil.copytree(version_folder, tmp / "exports" / NAME / "1")
    # No batching: the page's request and the test's own are then the very same computation.
    with live_server(tmp / "exports" / NAME, cfg.root / "config" / "Hyperparameters.yaml",
                     tmp / "serve.log", f"serve.max_request_mb={MAX_REQUEST_MB}",
                     "serve.max_batch_size=1") as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1000,760"):
        options.add_argument(argument)
    # A driver path given to Service means selenium-manager never runs (nothing is downloaded).
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The page freshly loaded, once it has found the model ready."""
    browser.get(f"{server.url}/")
    wait_for_text(browser, "model-state", "version 1, ready")
    return browser


@pytest.fixture(scope="module")
def digit(served_model, server) -> Digit:
    """The first digit PNG (by label, then file name) whose top label is right: the model is
    tiny and gets some wrong."""
    raw = served_model[0].path("raw_dir") / "digits"
    for label in map(str, range(10)):
        path = sorted((raw / label).glob("*.png"))[0]
        answer = api_answer(server, path.name, path.read_bytes())
        if answer["predictions"][0]["label"] == label:
            return Digit(label, path, answer)
    pytest.fail(f"the served model gets none of the first digit PNGs under {raw} right: "
                "check that the served_model fixture still trains it")


def api_answer(server, filename: str, data: bytes) -> dict:
    return httpx.post(f"{server.url}/predict", files={"file": (filename, data)}).json()


def wait_for_text(driver, element_id: str, text: str) -> None:
    element = driver.find_element(By.ID, element_id)
    WebDriverWait(driver, WAIT_SECONDS).until(
        lambda _: element.text == text,
        f"#{element_id} never read {text!r} (it reads {element.text!r})")


def wait_for_bars(driver) -> list:
    return WebDriverWait(driver, WAIT_SECONDS).until(
        lambda _: driver.find_elements(By.CSS_SELECTOR, "#predictions li"),
        f"no result bars appeared; the message reads {driver.find_element(By.ID, 'message').text!r}")


def choose(driver, path: Path) -> None:
    driver.find_element(By.ID, "file").send_keys(str(path))


def as_javascript_shows(probability: float) -> str:
    """``(p * 100).toFixed(1) + "%"``: toFixed rounds the double's exact value, ties up."""
    return f"{Decimal(probability * 100).quantize(Decimal('0.1'), ROUND_HALF_UP)}%"


def assert_shows(driver, filename: str, answer: dict) -> None:
    """The page shows ``answer`` (a POST /predict body) for the file ``filename``."""
    bars = wait_for_bars(driver)
    shown = [(bar.find_element(By.CLASS_NAME, "label").text,
              float(bar.get_attribute("data-probability")),
              bar.find_element(By.CLASS_NAME, "percent").text,
              bar.find_element(By.CLASS_NAME, "fill").get_attribute("style")) for bar in bars]
    assert shown == [(p["label"], p["probability"], as_javascript_shows(p["probability"]),
                      f"width: {as_javascript_shows(p['probability'])};")
                     for p in answer["predictions"]]
    assert driver.find_element(By.ID, "result-title").text == filename
    assert (driver.find_element(By.ID, "answered-by").text
            == f"answered by {answer['model']} version {answer['version']}")
    best = answer["predictions"][0]
    assert (driver.find_element(By.ID, "message").text
            == f"{filename}: most likely {best['label']} ({as_javascript_shows(best['probability'])})")
    preview = driver.find_element(By.ID, "preview")
    assert preview.is_displayed()
    assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                 preview) > 0


def assert_no_result(driver) -> None:
    assert not driver.find_element(By.ID, "result").is_displayed()
    assert driver.find_elements(By.CSS_SELECTOR, "#predictions li") == []


def uploads_logged(server) -> int:
    """POST /predict requests in the server's log (one JSON line each)."""
    lines = [json.loads(line) for line in server.log.read_text().splitlines()
             if line.startswith("{")]
    return sum(line.get("method") == "POST" and line.get("path") == "/predict"
               for line in lines)


def test_a_chosen_digit_shows_the_answer_of_the_api(page, digit):
    assert page.find_element(By.TAG_NAME, "h1").text == NAME
    choose(page, digit.path)
    assert_shows(page, digit.path.name, digit.answer)
    assert page.find_element(By.CSS_SELECTOR, "#predictions li .label").text == digit.label
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert page.save_screenshot(str(SCREENSHOT))


def test_a_text_file_is_refused_before_uploading(page, digit, tmp_path):
    choose(page, digit.path)
    wait_for_bars(page)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    choose(page, notes)
    wait_for_text(page, "message", "notes.txt is not an image (text/plain): choose a PNG, "
                                   "JPEG, GIF or BMP file.")
    assert_no_result(page)
    assert "error" in page.find_element(By.ID, "message").get_attribute("class")


def test_the_servers_error_is_shown_for_an_image_it_cannot_read(page, server, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("text in a file named like a PNG\n")
    refusal = httpx.post(f"{server.url}/predict", files={"file": (fake.name, fake.read_bytes())})
    assert refusal.status_code == 400
    choose(page, fake)
    wait_for_text(page, "message", f"The server refused notes.png: {refusal.json()['error']}")
    assert page.find_elements(By.CSS_SELECTOR, "#predictions li") == []
    assert not page.find_element(By.ID, "preview").is_displayed()


def test_a_file_over_the_limit_is_refused_without_uploading_it(page, server, served_model, digit,
                                                                tmp_path):
    limit = ServeSettings.from_config(served_model[0],
                                      max_request_mb=MAX_REQUEST_MB).max_request_bytes
    big = tmp_path / "big.png"
    big.write_bytes(digit.path.read_bytes().ljust(limit + 1, b"\0"))
    uploads = uploads_logged(server)
    choose(page, big)
    wait_for_text(page, "message", f"big.png is {limit + 1:,} bytes, over the server's limit "
                                   f"of {limit:,} bytes: choose a smaller image.")
    assert_no_result(page)
    # The next upload's log line comes after any the big file would have caused.
    choose(page, digit.path)
    assert_shows(page, digit.path.name, digit.answer)
    assert uploads_logged(server) == uploads + 1


@pytest.mark.parametrize("event", ["drop", "paste"])
def test_a_dropped_or_pasted_image_is_classified(page, digit, event):
    page.execute_script("""
        const [kind, base64, name] = arguments;
        const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], name, {type: "image/png"}));
        const init = {bubbles: true, cancelable: true};
        const event = kind === "drop"
            ? new DragEvent("drop", {...init, dataTransfer: data})
            : new ClipboardEvent("paste", {...init, clipboardData: data});
        (kind === "drop" ? document.getElementById("drop-zone") : document).dispatchEvent(event);
    """, event, base64.b64encode(digit.path.read_bytes()).decode(), f"{event}ped.png")
    assert_shows(page, f"{event}ped.png", digit.answer)


def test_the_file_chooser_is_reached_by_keyboard_and_labelled(page):
    page.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    chooser = page.switch_to.active_element
    assert chooser.get_attribute("id") == "file" and chooser.get_attribute("type") == "file"
    assert page.find_element(By.CSS_SELECTOR, "label[for=file]").text == "Choose an image…"
    assert page.find_element(By.ID, "message").get_attribute("aria-live") == "polite"


def test_the_footer_links_the_servers_endpoints(page, server):
    links = [a.get_attribute("href") for a in page.find_elements(By.CSS_SELECTOR, "footer a")]
    assert links == [f"{server.url}/v1/models/{NAME}", f"{server.url}/v1/models/{NAME}/metadata",
                     f"{server.url}/healthz", f"{server.url}/metrics"]
    assert all(httpx.get(link).status_code == 200 for link in links)


def test_a_model_name_with_html_in_it_is_shown_as_text(browser, served_model, tmp_path):
    name = '<b>x</b> &amp; "$cnn"'
    saved = tmp_path / "page.html"
    saved.write_text(upload_page(name, ServeSettings.from_config(served_model[0])))
    browser.get(saved.as_uri())
    assert browser.find_element(By.TAG_NAME, "h1").text == name
    assert browser.title == f"imgcls: {name}"
    assert (browser.find_element(By.CSS_SELECTOR, "footer a").get_attribute("href")
            == (tmp_path / "v1" / "models").as_uri() + "/" + quote(name, safe=""))
    # The script still runs: from a file: url it cannot reach healthz, and says so.
    WebDriverWait(browser, WAIT_SECONDS).until(
        lambda _: browser.find_element(By.ID, "model-state").text.startswith("model unavailable"))


def test_a_server_with_an_api_key_is_used_with_the_key_typed_into_the_page(
        browser, served_model, digit, tmp_path, monkeypatch):
    cfg, _, version_folder = served_model
    shutil.copytree(version_folder, tmp_path / NAME / "1")
    monkeypatch.setenv("IMGCLS_API_KEY", "s3cret")
    with live_server(tmp_path / NAME, cfg.root / "config" / "Hyperparameters.yaml",
                     tmp_path / "serve.log", "serve.max_batch_size=1") as keyed:
        browser.get(f"{keyed.url}/")
        wait_for_text(browser, "model-state", "version 1, ready")
        choose(browser, digit.path)
        WebDriverWait(browser, WAIT_SECONDS).until(
            lambda _: "missing API key" in browser.find_element(By.ID, "message").text)
        browser.find_element(By.ID, "api-key").send_keys("s3cret")
        choose(browser, digit.path)
        assert_shows(browser, digit.path.name, digit.answer)
        browser.refresh()  # the key is kept for the tab
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == "s3cret"
