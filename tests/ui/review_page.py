"""The review page (/ui) in Debian's headless Chromium, driven by Playwright.

Run by tests/review.rs against a server with captured pairs: ADMIN_URL, ADMIN_TOKEN, ROUTE,
CHROMIUM (the browser binary; Playwright's own browsers are never downloaded), and optionally
SCREENSHOT (a PNG path). Exits non-zero on the first failed check.
"""
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN = os.environ["ADMIN_URL"]
TOKEN = os.environ["ADMIN_TOKEN"]
ROUTE = os.environ["ROUTE"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = os.environ.get("SCREENSHOT")

# Without the background-networking flags Chromium stalls on a closed network.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def status_of(path, token=None):
    req = urllib.request.Request(ADMIN + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def route():
    req = urllib.request.Request(ADMIN + "/admin/routes/" + ROUTE)
    req.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def main():
    # Without the token: the page answers 401 (with its token form), the API 401.
    assert status_of("/ui") == 401, "GET /ui without the token"
    assert status_of("/ui", "wrong") == 401, "GET /ui with a wrong token"
    assert status_of("/admin/routes/%s/samples" % ROUTE) == 401, "samples without the token"
    assert status_of("/ui", TOKEN) == 200, "GET /ui with the token"

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            run(browser)
        finally:
            browser.close()


def run(context):
    # A loaded CI machine (2 cores, other tests alongside) is slow to paint.
    expect.set_options(timeout=20_000)
    context.set_default_timeout(30_000)
    errors = []
    # 1. No token: the form; a wrong token is refused; the right one opens the page.
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    resp = page.goto(ADMIN + "/ui")
    assert resp.status == 401, resp.status
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#app")).to_be_hidden()
    page.fill("#token", "wrong-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("refused")
    page.fill("#token", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#app")).to_be_visible()
    expect(page.locator('#routes tr[data-route="%s"]' % ROUTE)).to_be_visible()
    page.close()

    # 2. The token as a bearer header (an authenticating proxy): served at once.
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_extra_http_headers({"Authorization": "Bearer " + TOKEN})
    resp = page.goto(ADMIN + "/ui")
    assert resp.status == 200, resp.status
    row = page.locator('#routes tr[data-route="%s"]' % ROUTE)
    expect(row).to_be_visible()
    expect(row).to_contain_text("canary")
    expect(page.locator("#login")).to_be_hidden()
    # Quality over time: a sparkline with a line in it.
    expect(page.locator("#trend svg polyline.quality").first).to_be_attached()
    expect(row.locator("svg.spark")).to_have_count(1)
    # The pairs, side by side, with a word diff and each scorer's score.
    pairs = page.locator("#pairs .pair")
    expect(pairs.first).to_be_visible()
    assert pairs.count() >= 1
    expect(pairs.first.locator(".side")).to_have_count(2)
    expect(pairs.first.locator(".scorer[data-scorer=lexical]")).to_be_visible()
    # The LLM judge's score and its reason.
    expect(pairs.first.locator(".scorer[data-scorer=judge]")).to_be_visible()
    expect(pairs.first.locator(".judge-reason")).to_contain_text("judge: ")
    changed = page.locator("#pairs .diff del, #pairs .diff ins")
    assert changed.count() > 0, "no word marked changed in any pair"
    # A removed word is on stable's side, an added one on the candidate's.
    first_del = page.locator("#pairs .side:first-child .diff del")
    first_ins = page.locator("#pairs .side:last-child .diff ins")
    assert first_del.count() + first_ins.count() == changed.count()
    # The random order too.
    page.click(".tab[data-order=random]")
    expect(page.locator("#pairs .pair").first).to_be_visible()
    # Events: the configuration's.
    expect(page.locator("#events li").first).to_be_visible()
    if SCREENSHOT:
        page.screenshot(path=SCREENSHOT, full_page=False)

    # 3. Promote from the page, then roll back: each confirmed, each seen through the API.
    page.on("dialog", lambda d: d.accept())
    page.select_option("#phase", "promoted")
    page.fill("#share", "0.2")
    page.click("#promote")
    expect(page.locator("#action-result")).to_contain_text("promoted: promoted")
    r = route()
    assert (r["phase"], r["share"], r["serving"]) == ("promoted", 0.2, 2), r
    page.fill("#reason", "reviewed in the browser")
    page.click("#rollback")
    expect(page.locator("#action-result")).to_contain_text("rolled back")
    expect(row).to_contain_text("stable")
    r = route()
    assert r["candidate"] is None, r
    assert r["events"][-1]["kind"] == "rolled_back", r["events"][-1]
    expect(page.locator("#events li.rolled_back").first).to_contain_text("reviewed in the browser")
    expect(page.locator("#rollback")).to_be_disabled()
    assert not errors, errors
    print("review page: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print("FAILED:", e, file=sys.stderr)
        raise
