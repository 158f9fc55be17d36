"""The page at `/` of `sembase serve`, in a real browser (Chromium driven by Playwright).

Needs the release binary (target/release/sembase, or $SEMBASE_BIN), the model
(all-minilm-l6-v2) in the store, and Debian's Chromium at /usr/bin/chromium (or
$SEMBASE_CHROMIUM; scripts/test.sh installs it). Playwright's own browser download is
never used. Loopback only. Screenshots go to target/ui-screenshots/ for a person to
look at.

    .venv/bin/python -m pytest tests/python/test_page.py -q
"""
import json
import math
import os
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from sembase_serve import REPO_ROOT, SEMBASE, require_sembase, run_cli, serve

try:
    from playwright.sync_api import expect
except ImportError:  # reported by the `browser` fixture as a failure
    expect = None

CHROMIUM = Path(os.environ.get("SEMBASE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO_ROOT / "target" / "ui-screenshots"
MODEL = "all-minilm-l6-v2"
API_KEY = "page-test-key"
INDEX = "support"
HEAD = "topic"
REPORT = "eval-demo.html"
# A tiny random cross-encoder (a BERT of 2 layers over a 49-word vocabulary): its scores
# mean nothing, but they are deterministic, which is all the page's plumbing needs.
RERANKER_DIR = REPO_ROOT / "crates" / "sembase-core" / "tests" / "fixtures" / "tiny-bert-cross-encoder"
RERANKER = RERANKER_DIR.name
# A second embedding model for side-by-side comparison: the tiny random BERT of the
# training tests, served under its own name (`--model NAME=DIR`).
SECOND_MODEL = "tiny-bert"
SECOND_MODEL_DIR = REPO_ROOT / "crates" / "sembase-train" / "tests" / "fixtures" / "tiny-bert"
REPORT_TITLE = "Demo evaluation report"
DIGITS = 4  # decimals the page prints a score with

TOPICS = {
    "billing": [
        "How do I update my credit card?",
        "I was charged twice this month.",
        "Where can I download my invoice?",
        "Can I get a refund for last month?",
        "Why did my subscription price go up?",
        "How do I change my billing address?",
        "My payment was declined at checkout.",
        "Do you accept PayPal or bank transfer?",
        "I need a receipt for my purchase.",
        "How do I cancel my paid plan?",
    ],
    "account": [
        "How do I reset my password?",
        "I cannot log in to my account.",
        "How do I change my email address?",
        "My account was locked after failed logins.",
        "How do I turn on two-factor authentication?",
        "Can I delete my account permanently?",
        "I did not receive the verification email.",
        "How do I change my username?",
        "Someone else is using my account.",
        "How do I sign out of all devices?",
    ],
    "shipping": [
        "Where is my package?",
        "How long does delivery take?",
        "Do you ship to Canada?",
        "My parcel arrived damaged.",
        "Can I change the delivery address after ordering?",
        "How much does express shipping cost?",
        "The tracking number does not work.",
        "Can I pick up my order at a store?",
        "My order was delivered to the wrong house.",
        "Do you offer free shipping?",
    ],
}


def api(url, method, path, body=None, key=API_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server with an index, a head and a reports directory, all built here."""
    require_sembase()
    work = tmp_path_factory.mktemp("page")
    corpus = work / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as f:
        for topic, texts in TOPICS.items():
            for i, text in enumerate(texts):
                doc = {"id": f"{topic}-{i}", "text": text, "metadata": {"topic": topic}}
                f.write(json.dumps(doc) + "\n")
    run_cli("index", "build", "--model", MODEL, "--corpus", str(corpus), "--output", str(work / "index"))
    data = work / "topics.tsv"
    data.write_text(
        "text\tlabel\n"
        + "".join(f"{t}\t{topic}\n" for topic, texts in TOPICS.items() for t in texts),
        encoding="utf-8",
    )
    run_cli("head", "train", "--model", MODEL, "--data", str(data), "--output", str(work / "head"), "--folds", "3")
    reports = work / "reports"
    reports.mkdir()
    (reports / REPORT).write_text(
        f"<!doctype html><html><head><title>{REPORT_TITLE}</title>"
        f"<style>h1{{color:#2456c7}}</style></head><body><h1>{REPORT_TITLE}</h1>"
        "<table><tr><th>model</th><th>spearman</th></tr><tr><td>all-minilm-l6-v2</td><td>82.03</td></tr></table>"
        "</body></html>",
        encoding="utf-8",
    )
    (reports / "notes.txt").write_text("not a report", encoding="utf-8")

    with serve(
        SEMBASE, "--model", MODEL, "--model", str(RERANKER_DIR),
        "--model", f"{SECOND_MODEL}={SECOND_MODEL_DIR}", "--api-key", API_KEY,
        "--index", f"{INDEX}={work / 'index'}", "--head", f"{HEAD}={work / 'head'}",
        "--reports", str(reports),
    ) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright. A missing browser fails the run: skipping
    would let a machine without one pass without testing the page."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
            "(scripts/test.sh does), or point $SEMBASE_CHROMIUM at one"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `.venv/bin/pip install -r tests/python/requirements.txt`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


class Session:
    """One browser context on the page, recording every request and console error."""

    def __init__(self, browser, url, width=1280, height=900, scheme="light", key=API_KEY):
        self.context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
        if key is not None:
            # Runs in every frame; the sandboxed report frame has no storage to set.
            self.context.add_init_script(
                f"if (window === window.top) sessionStorage.setItem('sembase.apiKey', {json.dumps(key)})"
            )
        self.requests = []
        self.errors = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.page.wait_for_selector(f"#compare-model option[value='{MODEL}']", state="attached")

    def tab(self, name):
        self.page.click(f"#tab-{name}")
        return self.page.locator(f"#panel-{name}")

    def close(self):
        self.context.close()


@pytest.fixture
def session(browser, served):
    s = Session(browser, served)
    yield s
    s.close()


def assert_local(requests):
    assert requests, "the page made no requests"
    for url in requests:
        parsed = urlparse(url)
        if parsed.scheme in ("data", "about", "blob"):
            continue
        assert parsed.hostname == "127.0.0.1", f"request left 127.0.0.1: {url}"


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_page_loads_without_errors_or_outside_requests(session, served):
    page = session.page
    assert page.locator('[data-testid="compare-input"]').count() >= 2
    page.wait_for_load_state("networkidle")
    assert session.errors == []
    assert_local(session.requests)
    assert any(u.endswith("/ui/app.js") for u in session.requests)
    # The page answers with a CSP that keeps it to its own server.
    csp = httpx.get(served + "/").headers["content-security-policy"]
    assert "default-src 'self'" in csp
    # The tabs work from the keyboard.
    page.focus("#tab-compare")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-search", "aria-selected") == "true"
    assert page.evaluate("document.activeElement.id") == "tab-search"
    assert page.locator("#panel-search").is_visible()


def test_compare_shows_the_score_of_the_api_vectors(session, served):
    texts = ["How do I reset my password?", "I forgot my password and cannot sign in."]
    panel = session.page.locator("#panel-compare")
    inputs = panel.locator('[data-testid="compare-input"]')
    # Add a third text, then remove it again: the page starts from two.
    panel.locator("#compare-add").click()
    assert inputs.count() == 3
    panel.locator("#compare-texts li").nth(2).locator("button").click()
    assert inputs.count() == 2
    for i, text in enumerate(texts):
        inputs.nth(i).fill(text)
    panel.locator('[data-testid="compare-run"]').click()
    cell = panel.locator('[data-testid="similarity"][data-row="0"][data-col="1"]')
    cell.wait_for()
    shown = cell.inner_text()
    assert len(shown.split(".")[1]) == DIGITS, shown
    answer = api(served, "POST", "/v1/embeddings", {"model": MODEL, "input": texts}).json()
    expected = cosine(answer["data"][0]["embedding"], answer["data"][1]["embedding"])
    assert abs(float(shown) - expected) <= 0.5 * 10**-DIGITS + 1e-6, (shown, expected)
    assert shown == f"{expected:.{DIGITS}f}" or abs(float(shown) - expected) < 1e-6
    # The matrix is symmetric and shows every pair.
    assert panel.locator('[data-testid="similarity"]').count() == 4
    assert panel.locator('[data-testid="similarity"][data-row="1"][data-col="0"]').inner_text() == shown
    # Token counts are the model's, from /tokenize.
    ids = api(served, "POST", "/tokenize", {"inputs": texts}).json()
    counts = [int(t) for t in panel.locator(".legend .tokens").evaluate_all("els => els.map(e => e.dataset.tokens)")]
    assert counts == [len(x) for x in ids]
    assert session.errors == []
    assert_local(session.requests)


def test_compare_shows_two_models_side_by_side(session, served):
    texts = ["How do I reset my password?", "the cat sat on a mat"]
    panel = session.page.locator("#panel-compare")
    inputs = panel.locator('[data-testid="compare-input"]')
    for i, text in enumerate(texts):
        inputs.nth(i).fill(text)
    session.page.wait_for_selector(f"#compare-model-b option[value='{SECOND_MODEL}']", state="attached")
    panel.locator("#compare-model-b").select_option(SECOND_MODEL)
    panel.locator('[data-testid="compare-run"]').click()
    for model in (MODEL, SECOND_MODEL):
        card = panel.locator(f"figure[data-model='{model}']")
        cell = card.locator('[data-testid="similarity"][data-row="0"][data-col="1"]')
        cell.wait_for()
        answer = api(served, "POST", "/v1/embeddings", {"model": model, "input": texts}).json()
        expected = cosine(answer["data"][0]["embedding"], answer["data"][1]["embedding"])
        assert abs(float(cell.inner_text()) - expected) <= 0.5 * 10**-DIGITS + 1e-6, (model, cell.inner_text(), expected)
    assert panel.locator("figure[data-model]").count() == 2
    panel.locator("#compare-model-b").select_option("")
    assert session.errors == []
    assert_local(session.requests)


def test_search_shows_the_api_hits_in_order(session, served):
    query = "I paid twice for my subscription"
    expected = api(served, "POST", "/v1/search", {"index": INDEX, "query": query, "top_k": 10}).json()
    expected_ids = [h["id"] for h in expected["results"][0]["hits"]]
    assert len(expected_ids) == 10
    panel = session.tab("search")
    panel.locator("#search-index option[value='support']").wait_for(state="attached")
    panel.locator('[data-testid="search-query"]').fill(query)
    panel.locator('[data-testid="search-run"]').click()
    hits = panel.locator('[data-testid="search-hit"]')
    hits.first.wait_for()
    assert hits.evaluate_all("els => els.map(e => e.dataset.id)") == expected_ids
    first = expected["results"][0]["hits"][0]
    assert first["text"] in hits.first.inner_text()
    assert f"{first['score']:.{DIGITS}f}" in hits.first.inner_text()
    # The filter box narrows the hits as the API's filter does.
    body = {"index": INDEX, "query": query, "top_k": 5, "filter": {"topic": "shipping"}}
    filtered = [h["id"] for h in api(served, "POST", "/v1/search", body).json()["results"][0]["hits"]]
    assert len(filtered) == 5 and all(i.startswith("shipping-") for i in filtered), filtered
    panel.locator("#search-filter").fill('{"topic": "shipping"}')
    panel.locator("#search-top-k").fill("5")
    panel.locator('[data-testid="search-query"]').press("Enter")
    # The old ten hits are replaced by five (the request takes a moment).
    expect(hits).to_have_count(len(filtered))
    assert hits.evaluate_all("els => els.map(e => e.dataset.id)") == filtered
    assert session.errors == []
    assert_local(session.requests)


def test_search_rerank_shows_each_hits_rank_before_and_after(session, served):
    query = "Where is my parcel?"
    body = {"index": INDEX, "query": query, "top_k": 5, "rerank": {"model": RERANKER, "depth": 20}}
    expected = api(served, "POST", "/v1/search", body).json()["results"][0]["hits"]
    assert len(expected) == 5
    assert [h["retrieval_rank"] for h in expected] != [1, 2, 3, 4, 5], "the reranker should reorder"
    panel = session.tab("search")
    panel.locator("#search-index option[value='support']").wait_for(state="attached")
    # The reranker is offered for search only, not as a model to compare with.
    rerank = panel.locator('[data-testid="search-rerank"]')
    rerank.locator(f"option[value='{RERANKER}']").wait_for(state="attached")
    assert session.page.locator(f"#compare-model option[value='{RERANKER}']").count() == 0
    assert not panel.locator("#search-rerank-depth").is_visible()
    rerank.select_option(RERANKER)
    panel.locator("#search-rerank-depth").fill("20")
    panel.locator("#search-top-k").fill("5")
    panel.locator('[data-testid="search-query"]').fill(query)
    panel.locator('[data-testid="search-run"]').click()
    hits = panel.locator('[data-testid="search-hit"]')
    expect(hits).to_have_count(5)
    assert hits.evaluate_all("els => els.map(e => e.dataset.id)") == [h["id"] for h in expected]
    before = panel.locator('[data-testid="hit-before-rank"]').all_inner_texts()
    assert [int(b) for b in before] == [h["retrieval_rank"] for h in expected]
    for i, hit in enumerate(expected):
        shown = hits.nth(i).inner_text()
        assert f"#{i + 1}" in shown and f"{hit['score']:.{DIGITS}f}" in shown, shown
        assert f"{hit['retrieval_score']:.{DIGITS}f}" in shown, shown
    # Off again: plain hits, no ranks before.
    rerank.select_option("")
    panel.locator('[data-testid="search-run"]').click()
    plain = api(served, "POST", "/v1/search", {"index": INDEX, "query": query, "top_k": 5}).json()
    expect(hits.first).to_have_attribute("data-id", plain["results"][0]["hits"][0]["id"])
    expect(panel.locator('[data-testid="hit-before-rank"]')).to_have_count(0)
    assert session.errors == []
    assert_local(session.requests)


def test_classify_shows_the_heads_label(session, served):
    text = "My parcel never arrived and tracking shows nothing."
    expected = api(served, "POST", "/v1/classify", {"input": text}).json()["data"][0]["heads"][HEAD]
    panel = session.tab("classify")
    panel.locator('[data-testid="classify-input"]').fill(text)
    panel.locator('[data-testid="classify-run"]').click()
    label = panel.locator('[data-testid="classify-label"]')
    label.wait_for()
    assert label.inner_text() == expected["label"]
    assert panel.locator(".bars li").count() == len(expected["probabilities"])
    assert session.errors == []


def test_bad_requests_show_the_api_message(browser, served):
    # An empty query: the API refuses it, the page says what the API said.
    message = api(served, "POST", "/v1/search", {"index": INDEX, "query": "", "top_k": 10}).json()["error"]["message"]
    s = Session(browser, served)
    try:
        panel = s.tab("search")
        panel.locator("#search-index option[value='support']").wait_for(state="attached")
        panel.locator('[data-testid="search-run"]').click()
        error = panel.locator('[data-testid="error"]')
        error.wait_for()
        assert error.inner_text() == message
        # A wrong key, entered in the page: the API's 401 message.
        wrong = api(served, "GET", "/v1/models", key="wrong-key").json()["error"]["message"]
        s.page.fill("#api-key", "wrong-key")
        s.page.press("#api-key", "Enter")
        compare = s.tab("compare")
        compare.locator('[data-testid="compare-run"]').click()
        error = compare.locator('[data-testid="error"]')
        error.wait_for()
        assert error.inner_text() == wrong
        assert wrong == "incorrect API key"
        assert_local(s.requests)
    finally:
        s.close()


def test_no_key_shows_the_api_message(browser, served):
    message = api(served, "GET", "/v1/models", key=None).json()["error"]["message"]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(served)
        error = page.locator('#panel-compare [data-testid="error"]')
        error.wait_for()
        assert error.inner_text() == message
    finally:
        context.close()


def test_reports_are_listed_and_open(session):
    panel = session.tab("reports")
    link = panel.locator(f"button[data-report='{REPORT}']")
    link.wait_for()
    assert panel.locator("#reports-list li").count() == 1  # notes.txt is not listed
    link.click()
    frame = session.page.frame_locator("#report-frame")
    assert frame.locator("h1").inner_text() == REPORT_TITLE
    assert session.errors == []
    assert_local(session.requests)


@pytest.mark.parametrize("width,height", [(375, 812), (1280, 900)])
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshots(browser, served, width, height, scheme):
    """Every tab with results, written for a person to look at; nothing wider than the window."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    s = Session(browser, served, width=width, height=height, scheme=scheme)
    page = s.page
    try:
        panel = page.locator("#panel-compare")
        panel.locator("#compare-add").click()
        panel.locator('[data-testid="compare-input"]').nth(2).fill("When does the store open on Sundays?")
        panel.locator('[data-testid="compare-run"]').click()
        panel.locator('[data-testid="similarity"]').first.wait_for()
        panel = s.tab("search")
        panel.locator("#search-index option[value='support']").wait_for(state="attached")
        panel.locator('[data-testid="search-query"]').fill("my package is late")
        panel.locator("#search-top-k").fill("5")
        panel.locator('[data-testid="search-rerank"]').select_option(RERANKER)
        panel.locator('[data-testid="search-run"]').click()
        panel.locator('[data-testid="search-hit"]').first.wait_for()
        panel = s.tab("classify")
        panel.locator('[data-testid="classify-input"]').fill("I was billed twice for one order")
        panel.locator('[data-testid="classify-run"]').click()
        panel.locator('[data-testid="classify-label"]').wait_for()
        panel = s.tab("reports")
        panel.locator(f"button[data-report='{REPORT}']").click()
        page.frame_locator("#report-frame").locator("h1").wait_for()
        for tab in ["compare", "search", "classify", "reports"]:
            s.tab(tab)
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, f"{tab} at {width}px is {overflow}px wide"
            page.screenshot(path=str(SCREENSHOTS / f"{tab}-{width}-{scheme}.png"), full_page=True)
        assert s.errors == []
        assert_local(s.requests)
    finally:
        s.close()
