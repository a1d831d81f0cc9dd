"""Open the UI-format example workflows in ComfyUI's real web editor (headless Chromium, Playwright)
and check that each loads with every node known and converts back to exactly its API twin;
optionally save screenshots. A manual developer check (needs `pip install playwright` and Debian's
chromium; no browser download):

    python tests/comfyui/check_ui_workflows.py http://127.0.0.1:PORT [--shots DIR] [--run NAME=IMAGE[,MODEL]] [--width PX]

--run queues workflow NAME from the editor with IMAGE (a file in ComfyUI's input/) in its Load Image
node (and MODEL as the reward model choice), so its screenshot shows the outputs in the graph.

Prints one JSON line per workflow; exits 1 on any mismatch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/lib/chromium/chromium")
FIT = """() => {
    for (const el of document.querySelectorAll("body *")) {   // the "what's new" banner and the minimap
        if (el.children.length === 0 && /Introducing Nodes 2.0/.test(el.textContent || "")) {
            let b = el; while (b.parentElement && b.parentElement.offsetHeight < 80) b = b.parentElement; b.remove();
        }
    }
    try { window.app.extensionManager.setting.set("Comfy.Minimap.Visible", false); } catch (e) {}
    const nodes = window.app.graph._nodes || window.app.graph.nodes;
    let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 34);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const c = window.app.canvas, cw = c.canvas.clientWidth, ch = c.canvas.clientHeight;
    const scale = Math.min(1.2, (cw - 140) / (x1 - x0), (ch - 160) / (y1 - y0));
    c.ds.scale = scale;
    c.ds.offset = [90 / scale - x0, 110 / scale - y0];
    c.setDirty(true, true);
}"""


def main() -> int:
    from playwright.sync_api import sync_playwright

    url = sys.argv[1]
    shots = Path(sys.argv[sys.argv.index("--shots") + 1]) if "--shots" in sys.argv else None
    bad = 0
    import urllib.request

    with urllib.request.urlopen(url + "/object_info", timeout=60) as r:
        info = json.loads(r.read())

    def declared(graph: dict) -> dict:
        """Drop the editor-only widgets (e.g. Preview as Text's 'preview') that /object_info does not declare."""
        out = {}
        for nid, node in graph.items():
            spec = info[node["class_type"]]["input"]
            names = set(spec.get("required", {})) | set(spec.get("optional", {}))
            out[nid] = {**node, "inputs": {k: v for k, v in node["inputs"].items() if k in names}}
        return out

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        width = int(sys.argv[sys.argv.index("--width") + 1]) if "--width" in sys.argv else 1800
        page = browser.new_page(viewport={"width": width, "height": max(1000, width * 9 // 20)})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="networkidle", timeout=120_000)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph", timeout=120_000)
        page.wait_for_timeout(1500)
        page.keyboard.press("Escape")  # the template browser opens on first start
        runs = {}
        if "--run" in sys.argv:
            name, rest = sys.argv[sys.argv.index("--run") + 1].split("=", 1)
            runs[name] = rest.split(",")
        for ui_file in sorted((REPO / "workflows").glob("*.json")):
            ui = json.loads(ui_file.read_text())
            api = json.loads((REPO / "workflows" / "api" / ui_file.name).read_text())
            res = page.evaluate(
                """async (wf) => {
                    await window.app.loadGraphData(wf, true, true, null);
                    const nodes = window.app.graph._nodes || window.app.graph.nodes;
                    const unknown = nodes.filter(n => !window.LiteGraph.registered_node_types[n.type]).map(n => n.type);
                    const p = await window.app.graphToPrompt();
                    return {unknown, prompt: p.output, n: nodes.length};
                }""",
                ui,
            )
            prompt = declared(res["prompt"])
            # compare by class type + literal inputs + link targets (node ids are renumbered)
            def canon(graph: dict) -> list:
                ids = {}
                for nid, node in graph.items():
                    ids[nid] = node["class_type"] + "#" + str(sum(1 for m in list(graph)[: list(graph).index(nid)]
                                                                if graph[m]["class_type"] == node["class_type"]))
                out = []
                for nid, node in graph.items():
                    ins = {k: (graph[v[0]]["class_type"], v[1]) if isinstance(v, list)
                           else float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                           for k, v in node["inputs"].items()}
                    out.append((node["class_type"], json.dumps(ins, sort_keys=True)))
                return sorted(out)

            same = canon(prompt) == canon(api)
            ok = same and not res["unknown"]
            bad += not ok
            line = {"workflow": ui_file.name, "nodes": res["n"], "unknown": res["unknown"], "api_equal": same}
            if not same:
                line["diff"] = sorted(set(canon(prompt)) ^ set(canon(api)))[:6]
            print(json.dumps(line))
            if ui_file.stem in runs:
                image, *model = runs[ui_file.stem]
                page.evaluate(
                    """async ([image, model]) => {
                        const nodes = window.app.graph._nodes || window.app.graph.nodes;
                        for (const n of nodes) {
                            if (n.type === "LoadImage") n.widgets[0].value = image;
                            if (n.type === "FinPercepLoadRewardModel" && model) n.widgets[0].value = model;
                        }
                        await window.app.queuePrompt(0, 1);
                    }""",
                    [image, model[0] if model else None],
                )
                page.wait_for_timeout(2000)
                page.wait_for_function(
                    "fetch('/queue').then(r => r.json()).then(q => q.queue_running.length + q.queue_pending.length === 0)",
                    timeout=300_000, polling=1000)
                page.wait_for_timeout(6000)
            if shots is not None:
                page.evaluate(FIT)
                page.wait_for_timeout(800)
                page.screenshot(path=str(shots / f"comfyui_{ui_file.stem}.png"))
        if errors:
            print(json.dumps({"page_errors": errors[:5]}))
        browser.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
