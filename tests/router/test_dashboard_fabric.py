"""The dashboard against a whole fabric of real processes: etcd, two runtimes with their agents,
a `meshserve router` process serving REST (and so `/dashboard`) and the management API.

- the JSON endpoint's figures are the ones `meshserve top --once` prints (parsed from its text);
- headless Chromium (Debian's chromium + chromium-driver, through selenium; nothing is
  downloaded) loads the page: what it shows matches the fabric as etcd holds it, a model
  registered meanwhile appears without a reload, hostile model names and failure messages
  are shown as text. Without chromium those tests skip, saying so; CI installs it.
- a screenshot of the page with traffic: always taken (and checked to be a PNG); with
  `MESHSERVE_DASHBOARD_SCREENSHOT=docs/images/dashboard.png` it is also written there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from mesh.cli.render import size
from mesh.domain.records import ModelRecord
from protos import model_mesh_pb2 as mm
from tests.support.fabric import REPO, Fabric
from tests.support.models import add_onnx
from tests.support.ports import free_port
from tests.support.waiting import wait_until

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: A model id that is markup (no '/': ids may not hold one) and a storage path whose load
#: failure message will be markup too. Either would set `data-pwned` if it ever ran.
HOSTILE_ID = "evil<script>document.body.dataset.pwned='id'<img src=x onerror=\"document.body.dataset.pwned='img'\">"
HOSTILE_PATH = "/nonexistent/<img src=x onerror=\"document.body.dataset.pwned='failure'\">"


class DashboardFabric:
    def __init__(self, fabric: Fabric, router, rest_port: int, store: Path) -> None:
        self.fabric = fabric
        self.router = router
        self.rest_port = rest_port
        self.store = store
        self.url = f"http://127.0.0.1:{rest_port}/dashboard"

    def register(self, model_id: str, path: Path | str, load: bool = True) -> None:
        self.router.mesh.registerModel(mm.RegisterModelRequest(
            modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path)), loadNow=load, sync=load), timeout=60)

    def model_dir(self, model_id: str) -> Path:
        return add_onnx(self.store / model_id.replace("/", "_")[:40] / "model.onnx", weights=400_000 * (1 + len(model_id) % 3)).parent

    def snapshot(self) -> dict:
        with urllib.request.urlopen(self.url + "/api/snapshot", timeout=10) as response:
            return json.loads(response.read())

    def snapshot_ids(self) -> set[str]:
        return {row["id"] for row in self.snapshot()["models"]}

    def infer(self, model_id: str) -> None:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{self.router.port}") as client:
            tensor = grpcclient.InferInput("x", [1, 4], "FP32")
            tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
            client.infer(model_id, [tensor])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dashboard-fabric")
    fabric = Fabric(workdir)
    try:
        fabric.start_etcd()
        fabric.add_runtime("r0", "32MiB")
        fabric.add_runtime("r1", "32MiB")
        rest_port = free_port()
        router = fabric.add_router("--rest-port", str(rest_port), "--dashboard-sample-s", "1")
        made = DashboardFabric(fabric, router, rest_port, workdir / "store")
        for model_id in ("alpha", "beta", "gamma"):
            made.register(model_id, made.model_dir(model_id))
        # Registration refuses such an id now (mesh/domain/names.py); a record from before those
        # checks, written straight into etcd, is what can still bring one to the page.
        fabric.put_model(ModelRecord(HOSTILE_ID, "onnx", str(made.model_dir("hostile")),
                                     registered_ms=int(time.time() * 1000)))
        wait_until(lambda: HOSTILE_ID in made.snapshot_ids(), 30, "the hostile record on the dashboard")
        made.infer(HOSTILE_ID)  # its first call loads it, as registerModel's loadNow would have
        try:
            made.register("broken", HOSTILE_PATH)
        except grpc.RpcError:
            pass  # its load fails: that failure is what the page must show as text
        made.register("cold", made.model_dir("cold"), load=False)
        wait_until(lambda: made.snapshot()["fleet"]["models_failed"] == 1, 30, "the broken model's failure")
        yield made
    finally:
        fabric.close()


# -- the JSON endpoint equals `meshserve top --once` --------------------------------------------------
_TOP_ROW = re.compile(r"^(?P<id>\S+)(?P<draining> \(draining\))?\s+(?P<zone>\S+)\s+\[[^\]]*\]\s+(?P<share>\d+)%\s+"
                      r"(?P<used>\S+ \S+) / (?P<capacity>\S+ \S+)\s+(?P<models>\d+)\s+(?P<loading>\d+)\s+"
                      r"(?P<rate>[\d.]+)\s+(?P<lru>\S+)$")


def _top_once(router_port: int) -> dict:
    """Figures parsed from `meshserve top --once`'s text."""
    text = subprocess.run([sys.executable, "-m", "mesh.cli", "top", "--once", "--router", f"127.0.0.1:{router_port}"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, check=True).stdout
    lines = text.splitlines()
    memory = re.search(r"instances (\d+)  memory (.+?) / (.+?)  global LRU age", lines[1])
    counts = dict(re.findall(r"(registered|loaded|loading|failed|copies|vmodels) (\d+)", lines[2]))
    header = next(i for i, line in enumerate(lines) if line.startswith("INSTANCE"))
    rows = [_TOP_ROW.match(line) for line in lines[header + 1:] if line.strip()]
    assert all(rows), text
    return {
        "instances": int(memory.group(1)), "used": memory.group(2), "capacity": memory.group(3),
        "counts": {k: int(v) for k, v in counts.items()},
        "rows": [(r["id"], r["used"], r["capacity"], int(r["models"]), int(r["loading"]), r["rate"], int(r["share"]))
                 for r in rows],
    }


def _as_top_prints(document: dict) -> dict:
    fleet = document["fleet"]
    return {
        "instances": fleet["instances"], "used": size(fleet["used_bytes"]), "capacity": size(fleet["capacity_bytes"]),
        "counts": {"registered": fleet["models_registered"], "loaded": fleet["models_loaded"],
                   "loading": fleet["models_loading"], "failed": fleet["models_failed"], "copies": fleet["copies"],
                   "vmodels": fleet["vmodels"]},
        "rows": [(i["id"], size(i["used_bytes"]), size(i["capacity_bytes"]), i["models_total"], i["loads_in_progress"],
                  f"{i['request_rate_per_min']:.1f}",
                  round((i["used_bytes"] + i["loading_bytes"]) / i["capacity_bytes"] * 100) if i["capacity_bytes"] else 0)
                 for i in document["instances"]],
    }


def test_the_json_endpoint_says_what_top_once_prints(served):
    seen = {}

    def agree() -> bool:
        # Instances republish their rates now and then: compare while nothing moved, i.e.
        # when the JSON read before top and the one read after it say the same.
        before = _as_top_prints(served.snapshot())
        seen["top"] = _top_once(served.router.port)
        after = _as_top_prints(served.snapshot())
        seen["json"] = after
        return before == after == seen["top"]

    wait_until(agree, 60, "a moment when the JSON and `top --once` are read from one state", interval=0.5)
    top = seen["top"]
    assert top["instances"] == 2 and [row[0] for row in top["rows"]] == ["r0", "r1"]
    assert top["counts"]["registered"] == 6 and top["counts"]["failed"] == 1 and top["counts"]["loaded"] == 4


# -- headless Chromium ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(f"headless browser tests need Debian's chromium and chromium-driver ({', '.join(missing)} missing)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1440,1100", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    # An explicit driver: selenium-manager downloads nothing.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, what: str, timeout: float = 30):
    return wait_until(lambda: driver.execute_script(script), timeout, what)


def _shown_models(driver) -> dict[str, dict]:
    return driver.execute_script("""
        const rows = {};
        for (const row of document.querySelectorAll('#models tbody tr[data-model-id]')) {
          const cells = row.querySelectorAll('td');
          rows[row.dataset.modelId] = {id: cells[0].textContent, state: cells[2].textContent, failure: cells[7].textContent};
        }
        return rows;""")


def _shown_instances(driver) -> dict[str, dict]:
    return driver.execute_script("""
        const found = {};
        for (const row of document.querySelectorAll('.instance[data-instance-id]')) {
          found[row.dataset.instanceId] = {
            chips: [...row.querySelectorAll('.chip')].map((c) => c.textContent).sort(),
            used: row.querySelector('[data-field=used]').textContent};
        }
        return found;""")


def _open(driver, served) -> None:
    driver.get(served.url)
    _wait(driver, "return document.body.dataset.version !== undefined", "the first snapshot to be rendered")


def test_the_page_shows_the_fabric_as_etcd_holds_it(served, browser):
    _open(browser, served)
    instances = served.fabric.instances()  # read from etcd, not through the router
    models = served.fabric.models()

    def matches() -> bool:
        shown = _shown_instances(browser)
        return (sorted(shown) == sorted(instances)
                and all(shown[i]["chips"] == sorted(r.copies) for i, r in instances.items())
                and sorted(_shown_models(browser)) == sorted(models))

    wait_until(matches, 30, "the page to show the fabric's instances, their copies and every model")
    shown = _shown_instances(browser)
    for instance_id, record in instances.items():
        assert shown[instance_id]["used"] == f"{size(record.used_bytes)} / {size(record.capacity_bytes)}"
    assert browser.find_element("css selector", "[data-count=failed]").text == "1 failed"
    assert browser.execute_script("return document.getElementById('connection').textContent") == "live"


def test_a_model_registered_meanwhile_appears_without_a_reload(served, browser):
    _open(browser, served)
    browser.execute_script("window.__sameDocument = true;")
    served.register("delta", served.model_dir("delta"), load=False)
    _wait(browser, "return [...document.querySelectorAll('#models tbody tr')].some((r) => r.dataset.modelId === 'delta')",
          "the new model's row (pushed, no reload)")
    assert browser.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    assert _shown_models(browser)["delta"]["state"] == "NOT_LOADED"


def test_hostile_model_names_and_failures_are_shown_as_text(served, browser):
    _open(browser, served)
    _wait(browser, "return document.querySelectorAll('#models tbody tr[data-model-id]').length >= 6", "every model's row")
    rows = _shown_models(browser)
    assert rows[HOSTILE_ID]["id"] == HOSTILE_ID
    assert HOSTILE_PATH in rows["broken"]["failure"] and rows["broken"]["state"] == "LOADING_FAILED"
    chips = [chip for i in _shown_instances(browser).values() for chip in i["chips"]]
    assert HOSTILE_ID in chips  # the instance bar names it too, as text
    assert browser.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    assert browser.execute_script("return document.body.dataset.pwned") is None
    # The search box filters on the raw text as well.
    search = browser.find_element("id", "search")
    search.send_keys("<script>")
    _wait(browser, "return document.querySelectorAll('#models tbody tr[data-model-id]').length === 1", "the filter")
    assert list(_shown_models(browser)) == [HOSTILE_ID]
    search.clear()


def test_the_model_table_sorts_by_a_clicked_column(served, browser):
    _open(browser, served)
    _wait(browser, "return document.querySelectorAll('#models tbody tr[data-model-id]').length >= 6", "every model's row")
    order = "return [...document.querySelectorAll('#models tbody tr[data-model-id]')].map((r) => r.dataset.modelId)"
    by_id = browser.execute_script(order)
    assert by_id == sorted(by_id)  # by model id at first
    sizes = {m["id"]: m["size_bytes"] for m in served.snapshot()["models"]}
    header = browser.find_element("css selector", "#model-headers th[data-column='4']")  # size
    assert header.text == "size"
    header.click()
    _wait(browser, "return document.querySelector('#model-headers th.sorted-asc')?.dataset.column === '4'", "the sort")
    ascending = browser.execute_script(order)
    assert [sizes[m] for m in ascending] == sorted(sizes[m] for m in ascending)
    browser.find_element("css selector", "#model-headers th[data-column='4']").click()  # again: reversed
    _wait(browser, "return document.querySelector('#model-headers th.sorted-desc') !== null", "the reversed sort")
    descending = browser.execute_script(order)
    assert [sizes[m] for m in descending] == sorted((sizes[m] for m in descending), reverse=True)


def test_screenshot_of_the_page_with_traffic(served, browser, tmp_path):
    # The picture is for the docs: without the markup-named model the other tests needed
    # (and its copy's unload shows on the charts: an unregistered model's is not an eviction).
    served.router.mesh.unregisterModel(mm.UnregisterModelRequest(modelId=HOSTILE_ID), timeout=30)
    stop = threading.Event()
    wanted = os.environ.get("MESHSERVE_DASHBOARD_SCREENSHOT")
    busy = 40 if wanted else 6  # samples with traffic: the picture for the docs gets longer charts

    def traffic() -> None:
        rounds = 0
        while not stop.is_set():
            rounds += 1
            # Bursts that change over time, so the charts have a shape.
            for model_id in ["alpha"] * (2 + rounds % 7) + ["beta"] * (1 + rounds % 3) + ["gamma"]:
                served.infer(model_id)

    sender = threading.Thread(target=traffic, name="dashboard-traffic", daemon=True)
    sender.start()
    try:
        wait_until(lambda: sum(1 for s in served.snapshot()["history"]["samples"] if s["requests"]) >= busy, busy * 5,
                   f"{busy} samples with traffic")
        served.infer("cold")  # a cache miss and a load, on the charts
        wait_until(lambda: any(s["cache_misses"] for s in served.snapshot()["history"]["samples"]), 30,
                   "a sample with the cache miss")
    finally:
        stop.set()
        sender.join(30)
    browser.set_window_size(1440, 1060)  # the whole page, model table included
    _open(browser, served)
    _wait(browser, "return document.querySelectorAll('.chart polyline').length >= 5", "the charts")
    picture = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 10_000
    if wanted:
        shutil.copyfile(picture, REPO / wanted)
