"""The exporter's live page in headless Chromium, on a node with traffic.

Three limited namespace Pods (tests/kernel/observe_net.py), bulk flows into
two of them and short requests into all. The page at `/` must show every Pod
with traffic flowing (a non-zero passing rate and the bulk flow as a heavy
hitter while iperf3 runs), and once traffic has stopped, its numbers must be
exactly those of `natra status --json`.
Chromium is Debian's `chromium` driven by `chromium-driver` through selenium;
the test skips (saying why) when one of them is missing. Set
NATRA_WEB_SCREENSHOT=path to keep the screenshot (docs/img/web.png is made so).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import netns
import observe_net as N
import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1000")
RATE_BPS = 20_000_000
PODS = 3
BULK_PODS = (0, 1)
TRAFFIC_S = 6
LIVE_WAIT_S = 5.0  # the page polls every second and needs two polls for a rate
QUIET_WAIT_S = 1.6  # after traffic: flows age out and the page polls at least once more
SCREENSHOT_ENV = "NATRA_WEB_SCREENSHOT"


SKIP_REASON = netns.kernel_skip_reason(tools=("iperf3",), modules=("selenium",),
                                      files={CHROMIUM: "chromium", CHROMEDRIVER: "chromium-driver"})
if SKIP_REASON:
    pytestmark.append(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix=f"{N.PREFIX}chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        yield driver
    finally:
        if driver is not None:
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _page_numbers(driver) -> dict:
    """What the page shows, read from its data-value attributes."""
    return driver.execute_script("""
        const out = {};
        for (const card of document.querySelectorAll('article.pod')) {
          const dirs = {};
          for (const sec of card.querySelectorAll('section.dir')) {
            const nums = {};
            for (const n of sec.querySelectorAll('.nums [data-field]')) {
              nums[n.dataset.field] = Number(n.dataset.value);
            }
            const hitters = [];
            for (const row of sec.querySelectorAll('tr[data-key]')) {
              const cell = f => Number(row.querySelector('[data-field="' + f + '"]').dataset.value);
              hitters.push({key: row.dataset.key, flow: row.querySelector('[data-field="flow"]').textContent,
                            passed_bytes: cell('passed_bytes'), dropped_bytes: cell('dropped_bytes'),
                            estimate_bytes: cell('estimate_bytes')});
            }
            dirs[sec.dataset.direction] = {nums, hitters};
          }
          out[card.dataset.containerId] = {title: card.querySelector('h2').textContent, dirs};
        }
        return out;""")


def _wait_for(driver, predicate, seconds: float):
    end = time.monotonic() + seconds
    while True:
        shown = _page_numbers(driver)
        if predicate(shown):
            return shown
        if time.monotonic() > end:
            return shown
        time.sleep(0.2)


def test_page_shows_live_pods_and_matches_status(browser):
    with N.node(PODS, RATE_BPS) as node, N.exporter(node.root) as base:
        bulk_keys = {node.pods[i].container_id: f"tcp {node.remote.ip}:{N.BULK_CPORT_BASE + i} > "
                     f"{node.pods[i].ip}:{N.IPERF_PORT}" for i in BULK_PODS}
        with N.servers(node.pods, deadline_s=TRAFFIC_S + 20):
            bulks = [N.bulk(node.remote, node.pods[i], i, TRAFFIC_S) for i in BULK_PODS]
            shorts = [N.short(node.remote, p, 40, 10_000, 0.1) for p in node.pods]
            browser.get(base + "/")

            def live(shown: dict) -> bool:
                return all(cid in shown and shown[cid]["dirs"]["to_pod"]["nums"]["passed_bps"] > 0
                           and any(h["flow"] == key for h in shown[cid]["dirs"]["to_pod"]["hitters"])
                           for cid, key in bulk_keys.items())

            during = _wait_for(browser, live, LIVE_WAIT_S)
            if os.environ.get(SCREENSHOT_ENV):
                browser.save_screenshot(os.environ[SCREENSHOT_ENV])
            for proc in bulks + shorts:
                N.finish(proc, TRAFFIC_S + 20)
        assert live(during), during
        for p in node.pods:
            assert during[p.container_id]["title"] == f"{N.POD_NAMESPACE}/{p.name}"

        time.sleep(QUIET_WAIT_S)
        status = json.loads(N.tool("status", "--json", root=node.root))
        time.sleep(QUIET_WAIT_S)  # one more poll of the page after status was read
        shown = _page_numbers(browser)
        assert browser.find_element("id", "summary").get_attribute("data-pods") == str(PODS)
        assert set(shown) == {p["container_id"] for p in status["pods"]}
        for pod in status["pods"]:
            for d in pod["directions"]:
                page = shown[pod["container_id"]]["dirs"][d["direction"]]
                if not d["limited"] and d["counters"]["frames"] == 0:
                    assert page == {"nums": {}, "hitters": []}  # shown as one "not limited" line
                    continue
                for field in ("passed_bytes", "dropped_bytes", "marked_packets", "heavy_active",
                              "backlog_bytes"):
                    assert page["nums"][field] == d[field], (pod["pod"], d["direction"], field)
                assert page["nums"]["frames"] == d["counters"]["frames"]
                assert page["nums"]["passed_bps"] == 0  # traffic has stopped
                want = [{k: h[k] for k in ("key", "flow", "passed_bytes", "dropped_bytes", "estimate_bytes")}
                        for h in d["heavy_hitters"]]
                assert page["hitters"] == want
            if pod["container_id"] in bulk_keys:
                to_pod = next(d for d in pod["directions"] if d["direction"] == "to_pod")
                assert to_pod["dropped_bytes"] > 0
                assert to_pod["heavy_hitters"][0]["flow"] == bulk_keys[pod["container_id"]]


def test_not_limited_in_red_and_shaping_classes_on_the_page(browser):
    """Made-up snapshot served in-process: a Pod that failed open, a shaped Pod with a fallback."""
    import sys
    import threading

    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
    from test_fail_open_views import shaped

    from natra.cni import failopen
    from natra.node import exporter as E
    from natra.node import observe as O

    since = time.time_ns() - 180 * 10**9
    lost = failopen.Record("dead00beef", pod="team-b/lost-0", directions={
        "to_pod": {"cause": "peer_check", "message": "peer check: netns gone"}}, since_ns=since)
    view = shaped(fallback="another root qdisc on the IFB")
    server = E.make_server("127.0.0.1:0", lambda: ([view], 10**12), lambda v: O.not_limited([lost], v))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_address[1]}/")
        end = time.monotonic() + 10
        while not browser.execute_script("return !document.getElementById('not-limited').hidden"):
            assert time.monotonic() < end, "the NOT LIMITED box never showed"
            time.sleep(0.1)
        box = browser.execute_script(
            "const b = document.getElementById('not-limited'); const r = b.querySelector('tr.not-limited');"
            "return {text: b.textContent, color: getComputedStyle(b).color,"
            " border: getComputedStyle(b).borderColor, cause: r.dataset.cause,"
            " direction: r.dataset.direction};")
        assert box["color"] == box["border"] == "rgb(197, 48, 48)"  # --drop, the page's red
        assert (box["cause"], box["direction"]) == ("peer_check", "to_pod")
        assert "team-b/lost-0" in box["text"] and "(3 min ago)" in box["text"]
        modes = browser.execute_script(
            "return [...document.querySelectorAll('[data-field=mode]')]"
            ".map(e => [e.dataset.value, e.textContent, getComputedStyle(e).color]);")
        assert modes[0][:2] == ["shape", "mode shape on veth9"]
        assert modes[1][0] == "police" and "shaping fell back: another root qdisc" in modes[1][1]
        assert modes[1][2] == "rgb(197, 48, 48)"
        classes = browser.execute_script(
            "return [...document.querySelectorAll('table.classes tr[data-class]')]"
            ".map(r => r.dataset.class);")
        assert classes == ["root", "heavy0"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
