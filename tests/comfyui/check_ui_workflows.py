"""Open every UI-format example workflow in ComfyUI's real web editor (headless Debian Chromium through
Playwright, no browser download), the way a user does: Templates -> Extensions -> <node folder> ->
click the workflow (the editor fetches ``/api/workflow_templates/<node folder>/<name>.json``), check
the loaded graph against its API twin, queue it with the editor's own Run and wait for it; then no
node may be red (validation or execution error), no two nodes may overlap (with the previews and
result texts they show after the run), and a screenshot of the graph is saved. After the run the
result texts must survive a switch to another workflow tab and back, and a second, fully cached
run. A template whose loader names a file with ``properties.models`` and the file missing must open
the frontend's missing-model dialog (its names are reported).

    python tests/comfyui/check_ui_workflows.py URL [--folder finpercep] [--shots DIR] [--only NAME[,NAME]]
        [--set JSON] [--no-run] [--width PX] [--thumbnails DIR] [--search WORD[,WORD]]

``--search`` types each word into the editor's node search (double-click on the canvas) and
reports the node titles it lists. ``--thumbnails DIR`` writes ``DIR/<name>.jpg``, the template card's thumbnail, from the graph after
its run (``--thumbnails example_workflows`` regenerates the committed ones; the test suite writes
them to a temporary folder).

``--set`` changes widget values before the run, by node type, e.g. the test suite's tiny checkpoint:
``{"CheckpointLoaderSimple": {"ckpt_name": "tiny.safetensors"}, "KSampler": {"steps": 1}}`` (a user's
first Run needs none of it for the reward workflows). Prints one JSON line per workflow; exits 1
when any check fails. Used by tests/test_comfyui_server.py; the README's ComfyUI screenshots are
its ``--shots docs`` output.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UI_DIR = REPO / "example_workflows"
CHROMIUM = os.environ.get("FINPERCEP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
NOTE_TYPES = ("Note", "MarkdownNote")

TIDY = """() => {
    for (const el of document.querySelectorAll("body *")) {   // the "what's new" banner
        if (el.children.length === 0 && /Introducing Nodes 2.0/.test(el.textContent || "")) {
            let b = el; while (b.parentElement && b.parentElement.offsetHeight < 80) b = b.parentElement; b.remove();
        }
    }
    try { window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false); } catch (e) {}
    window.app.canvas.min_font_size_for_lod = 0;   // draw text and widgets at every zoom (screenshots)
}"""
FIT = """() => {
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 34);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const c = window.app.canvas, cw = c.canvas.clientWidth, ch = c.canvas.clientHeight;
    const scale = Math.min(1.1, (cw - 120) / (x1 - x0), (ch - 150) / (y1 - y0));
    c.ds.scale = scale;
    c.ds.offset = [60 / scale - x0, 100 / scale - y0];
    c.setDirty(true, true);
}"""
HIDE_OVERLAYS = """() => {   // what floats over the canvas: toolbars, title, toasts, minimap (SHOW_OVERLAYS undoes it)
    const canvas = window.app.canvas.canvas, r = canvas.getBoundingClientRect();
    for (const el of document.querySelectorAll("body *")) {
        if (el === canvas || el.contains(canvas) || !["fixed", "absolute"].includes(getComputedStyle(el).position)) continue;
        const b = el.getBoundingClientRect();
        if (b.width && b.height && b.right > r.left && b.left < r.right && b.bottom > r.top && b.top < r.bottom
                && !el.closest(".dom-widget, .comfy-multiline-input") && !el.classList.contains("dom-widget")) {
            el.dataset.finpercepHidden = el.style.display;
            el.style.display = "none";
        }
    }
}"""
FOCUS = """(types) => {   // zoom the canvas onto a square of the graph; returns its box on the page
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 34);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const key = types.map(t => nodes.find(n => n.type === t)).find(n => n) || nodes[0];
    const pad = 20, side = Math.max(y1 - y0, key.size[0] * 2) + 2 * pad;
    const cx = key.pos[0] + key.size[0] / 2;
    const left = Math.max(x0 - pad, Math.min(cx - side / 2, x1 + pad - side)), top = (y0 + y1) / 2 - side / 2;
    const c = window.app.canvas, r = c.canvas.getBoundingClientRect();
    const px = Math.min(r.width, r.height), scale = px / side;
    c.show_info = false;   // the canvas's own statistics in its corner
    c.ds.scale = scale;
    c.ds.offset = [-left, -top];
    c.setDirty(true, true);
    return {x: r.left, y: r.top, width: px, height: px};
}"""
SHOW_OVERLAYS = """() => { for (const el of document.querySelectorAll("[data-finpercep-hidden]")) {
    el.style.display = el.dataset.finpercepHidden; delete el.dataset.finpercepHidden; }
    window.app.canvas.show_info = true; }"""
GRAPH_BOX = """() => {   // the nodes' bounding box on the page, in CSS px
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    const c = window.app.canvas, r = c.canvas.getBoundingClientRect(), s = c.ds.scale, o = c.ds.offset;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 34);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const px = v => v * s, pad = 12;
    const x = Math.max(r.left, r.left + px(x0 + o[0]) - pad), y = Math.max(r.top, r.top + px(y0 + o[1]) - pad);
    return {x, y, width: Math.min(r.right, r.left + px(x1 + o[0]) + pad) - x,
            height: Math.min(r.bottom, r.top + px(y1 + o[1]) + pad) - y};
}"""
PREPARE = """async (overrides) => {
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    for (const n of nodes) {
        for (const [name, value] of Object.entries(overrides[n.type] || {})) {
            const w = (n.widgets || []).find(w => w.name === name);
            if (w) w.value = value;
        }
    }
    const unknown = nodes.filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type);
    const p = await window.app.graphToPrompt();
    return {unknown, prompt: p.output, n: nodes.length, types: nodes.map(n => n.type)};
}"""
STATE = """() => {
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    const execErr = window.app.lastExecutionError;
    const red = nodes.filter(n => n.has_errors || (execErr && String(execErr.node_id) === String(n.id)))
                     .map(n => `${n.id}:${n.type}`);
    const boxes = nodes.map(n => ({id: n.id, type: n.type, x0: n.pos[0], y0: n.pos[1] - 30,
                                  x1: n.pos[0] + n.size[0], y1: n.pos[1] + n.size[1]}));
    const overlaps = [];
    for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1) overlaps.push(`${a.id}:${a.type} / ${b.id}:${b.type}`);
    }
    const texts = {}, textNodes = [];
    for (const n of nodes) {
        const w = (n.widgets || []).find(w => w.name === "finpercep_result");
        if (w) textNodes.push(String(n.id));
        if (w && w.value) texts[n.id] = w.value;
    }
    const previews = nodes.filter(n => (n.imgs || []).length > 0).map(n => n.id);
    return {red, overlaps, texts, text_nodes: textNodes, previews, node_errors: window.app.lastNodeErrors || null,
            execution_error: execErr ? {node: execErr.node_id, type: execErr.node_type,
                                        message: execErr.exception_message} : null};
}"""


def _get(url: str, path: str):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.loads(r.read())


def _post(url: str, path: str, body: dict) -> None:
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60):
        pass


def _arg(name: str, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def _declared(graph: dict, info: dict) -> dict:
    """Drop inputs /object_info does not declare (editor-only widgets such as Preview Any's 'preview')."""
    out = {}
    for nid, node in graph.items():
        spec = info[node["class_type"]]["input"]
        names = set(spec.get("required", {})) | set(spec.get("optional", {}))
        out[nid] = {**node, "inputs": {k: v for k, v in node["inputs"].items() if k in names}}
    return out


def _canon(graph: dict) -> list:
    """Class type + literal inputs + link targets (node ids are renumbered by the editor)."""
    out = []
    for node in graph.values():
        ins = {k: (graph[v[0]]["class_type"], v[1]) if isinstance(v, list)
               else float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
               for k, v in node["inputs"].items()}
        out.append((node["class_type"], json.dumps(ins, sort_keys=True)))
    return sorted(out)


def _wait_idle(url: str, before: set, timeout: float = 600) -> dict:
    """Wait until the queue is empty and a new history entry exists; return that entry."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        q = _get(url, "/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            hist = _get(url, "/history")
            new = [k for k in hist if k not in before]
            if new:
                return hist[new[-1]]
        time.sleep(0.5)
    raise TimeoutError(f"the queued workflow did not finish within {timeout} s")


def _shrink(path: Path) -> None:
    """A 256-colour PNG (a third of the size; the README carries several)."""
    from PIL import Image

    img = Image.open(path).convert("RGB")
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


MISSING_MODELS = "When loading the graph, the following models were not found"
THUMB_SIZE = 400


def switch_tab_and_back(page) -> None:
    """Open a new blank workflow tab, then go back to the previous one (the graph is reloaded and
    the node outputs restored, as when a user switches tabs)."""
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.NewBlankWorkflow')")
    page.wait_for_timeout(1500)
    page.evaluate("() => window.app.extensionManager.command.execute('Workspace.PreviousOpenedWorkflow')")
    page.wait_for_timeout(1500)
    page.evaluate(FIT)  # every node in view: the canvas draws (and fills) only the nodes it shows
    page.wait_for_timeout(1500)


#: the node a template's card centres on: its main result (the first of these types in the graph)
THUMB_FOCUS = ["FinPercepBestOfN", "FinPercepCompareToReference", "FinPercepPDMToInpaintMask", "FinPercepScoreImage"]


def thumbnail(page, out: Path, width: int) -> None:
    """The template card's picture (the card is square): a THUMB_SIZE px JPEG of a square of the
    graph as tall as the graph, centred on its main result node (:data:`THUMB_FOCUS`), with the
    canvas's floating toolbars hidden."""
    from PIL import Image

    page.set_viewport_size({"width": 1000, "height": 1000})
    page.wait_for_timeout(500)
    page.evaluate(HIDE_OVERLAYS)
    box = page.evaluate(FOCUS, THUMB_FOCUS)
    page.wait_for_timeout(1200)
    tmp = out.with_suffix(".png")
    page.screenshot(path=str(tmp), clip=box)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(tmp).convert("RGB").resize((THUMB_SIZE, THUMB_SIZE), Image.LANCZOS).save(
        out, "JPEG", quality=82, optimize=True, progressive=True)
    tmp.unlink()
    page.evaluate(SHOW_OVERLAYS)
    page.set_viewport_size({"width": width, "height": max(900, width * 9 // 16)})
    page.wait_for_timeout(500)


def open_template(page, folder: str, name: str) -> list[str]:
    """Templates -> the extension's entry -> click the workflow's card; waits until the dialog closes.
    Returns the file names the frontend's missing-model dialog lists (and closes it), or []."""
    page.evaluate("() => window.app.graph.clear()")
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text("All Templates").first.wait_for(timeout=30_000)
    page.get_by_text(folder, exact=True).first.click()
    page.get_by_text(name, exact=True).first.click()
    page.wait_for_function("() => (window.app.graph._nodes || window.app.graph.nodes).length > 0", timeout=60_000)
    for _ in range(20):
        if page.get_by_text("All Templates").count() == 0:
            break
        page.wait_for_timeout(250)
    else:
        page.keyboard.press("Escape")
    page.wait_for_timeout(1000)
    missing: list[str] = []
    if page.get_by_text(MISSING_MODELS).count():
        dialog = page.get_by_role("dialog").filter(has_text=MISSING_MODELS).first
        missing = sorted(set(re.findall(r"[\w.-]+\.safetensors", dialog.inner_text())))
        page.keyboard.press("Escape")
        page.wait_for_timeout(500)
    return missing


def search_nodes(page, word: str, limit: int = 40) -> list[str]:
    """What the node search box (as a double-click on the canvas opens it) lists for ``word``: the
    display name and category of each hit, in order."""
    page.evaluate("() => window.app.extensionManager.command.execute('Workspace.SearchBox.Toggle')")
    page.wait_for_timeout(800)
    page.locator("input[placeholder*='Search' i]:visible").first.wait_for(timeout=10_000)
    page.keyboard.type(word, delay=20)  # the search box has the focus
    page.wait_for_timeout(1500)
    hits = [" ".join(t.split()) for t in page.locator(".p-autocomplete-option, [role='option']").all_inner_texts()]
    page.keyboard.press("Escape")
    page.wait_for_timeout(300)
    return [h for h in hits if h][:limit]


def card_titles(page, folder: str) -> list[str]:
    """The titles of the extension's template cards, in the order shown."""
    page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text("All Templates").first.wait_for(timeout=30_000)
    page.get_by_text(folder, exact=True).first.click()
    page.wait_for_timeout(1500)
    names = {p.stem for p in UI_DIR.glob("*.json")}
    seen = [t.strip() for t in page.locator("h3, h4, .line-clamp-1, .line-clamp-2, span, div").all_inner_texts()
            if t.strip() in names]
    page.keyboard.press("Escape")
    page.wait_for_timeout(500)
    return list(dict.fromkeys(seen))


def main() -> int:
    from playwright.sync_api import sync_playwright

    url = sys.argv[1].rstrip("/")
    folder = _arg("--folder", "finpercep")
    shots = Path(_arg("--shots")) if "--shots" in sys.argv else None
    only = set(_arg("--only").split(",")) if "--only" in sys.argv else None
    overrides = json.loads(_arg("--set", "{}"))
    run = "--no-run" not in sys.argv
    width = int(_arg("--width", "1700"))
    thumbs = Path(_arg("--thumbnails")) if "--thumbnails" in sys.argv else None
    info = _get(url, "/object_info")
    listed = _get(url, "/workflow_templates").get(folder, [])
    bad = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": max(900, width * 9 // 16)})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="networkidle", timeout=180_000)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=180_000)
        page.wait_for_timeout(3000)
        page.keyboard.press("Escape")  # the template browser opens on first start
        page.evaluate(TIDY)
        print(json.dumps({"card_titles": card_titles(page, folder)}), flush=True)
        if "--search" in sys.argv:
            page.evaluate("() => window.app.graph.clear()")
            words = [w for w in _arg("--search").split(",") if w]
            print(json.dumps({"search": {w: search_nodes(page, w) for w in words}}), flush=True)
        for ui_file in sorted(UI_DIR.glob("*.json")):
            name = ui_file.stem
            twin = json.loads(ui_file.read_text())["extra"]["finpercep_api_twin"]
            if only and name not in only and Path(twin).stem not in only:
                continue
            api = json.loads((UI_DIR / twin).read_text())
            line: dict = {"workflow": name, "api": Path(twin).stem, "listed": name in listed}
            try:
                line["missing_models"] = open_template(page, folder, name)
            except Exception as e:  # noqa: BLE001 - reported, the other workflows still run
                line["error"] = f"could not open the template from the template browser: {e}"
                print(json.dumps(line), flush=True)
                bad += 1
                continue
            res = page.evaluate(PREPARE, overrides)
            want_types = sorted([n["type"] for n in json.loads(ui_file.read_text())["nodes"]])
            line["loaded_from_template"] = sorted(res["types"]) == want_types
            prompt = _declared(res["prompt"], info)
            want = {k: v for k, v in api.items()}
            for node in want.values():  # the --set overrides apply to the twin too
                for k, v in overrides.get(node["class_type"], {}).items():
                    if k in node["inputs"]:
                        node["inputs"][k] = v
            same = _canon(prompt) == _canon(want)
            line.update(nodes=res["n"], unknown=res["unknown"], api_equal=same)
            if not same:
                line["diff"] = sorted(set(map(str, _canon(prompt))) ^ set(map(str, _canon(want))))[:6]
            ok = same and not res["unknown"] and line["listed"] and line["loaded_from_template"]
            if run:
                before = set(_get(url, "/history"))
                _post(url, "/free", {"free_memory": True})  # no cached nodes: every node runs and shows its result
                page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
                page.wait_for_timeout(1000)
                entry = _wait_idle(url, before)
                status = entry.get("status", {})
                line["status"] = status.get("status_str")
                page.wait_for_timeout(2500)  # previews and result texts arrive over the websocket
                state = page.evaluate(STATE)
                line.update(red=state["red"], overlaps=state["overlaps"], texts=state["texts"], text_nodes=state["text_nodes"],
                            previews=state["previews"], node_errors=state["node_errors"],
                            execution_error=state["execution_error"])
                ok = ok and line["status"] == "success" and not state["red"] and not state["overlaps"] \
                    and not state["node_errors"] and state["execution_error"] is None
                switch_tab_and_back(page)
                line["texts_after_tab_switch"] = page.evaluate(STATE)["texts"]
                if thumbs is not None:  # the restored graph: previews and texts, no "job completed" panel
                    thumbnail(page, thumbs / f"{name}.jpg", width)
                    line["thumbnail"] = str(thumbs / f"{name}.jpg")
                before = set(_get(url, "/history"))
                page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")  # all cached now
                page.wait_for_timeout(1000)
                _wait_idle(url, before)
                page.wait_for_timeout(1500)
                line["texts_after_cached_run"] = page.evaluate(STATE)["texts"]
            else:
                state = page.evaluate(STATE)
                line["overlaps"] = state["overlaps"]
                ok = ok and not state["overlaps"]
            if shots is not None:
                page.evaluate(FIT)
                page.wait_for_timeout(1200)
                shot = shots / f"comfyui_{line['api']}.png"  # the README's docs/comfyui_<api twin>.png
                page.screenshot(path=str(shot))
                _shrink(shot)
                line["screenshot"] = str(shot)
            line["ok"] = bool(ok)
            bad += not ok
            print(json.dumps(line), flush=True)
        if errors:
            print(json.dumps({"page_errors": errors[:5]}), flush=True)
        browser.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
