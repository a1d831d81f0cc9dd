"""Write the UI-format (LiteGraph) twins of the API-format example workflows.

    python tests/comfyui/api_to_ui.py OBJECT_INFO.json [--check]

example_workflows/api/<name>.json (what POST /prompt runs) -> example_workflows/<title>.json (what
the ComfyUI editor opens; ComfyUI's template browser lists a custom node's example_workflows/*.json).
The frontend (1.32.9) titles a custom node's template card with its file name and reads no other
metadata, so the file name is the human title (:data:`TEMPLATES`, in the order of the cards, what
runs with nothing downloaded first; ``comfyui_finpercep/web/finpercep.js`` sorts the list, which
ComfyUI serves in directory order). ``<title>.jpg`` beside it is the card's thumbnail
(``check_ui_workflows.py --thumbnails``, from a real run). A loader whose file has a public download
gets ``properties.models`` (:data:`MODELS`: name, url, directory), so the frontend offers to
download it when it is missing.
Widget order, output types and names come from a live server's /object_info. An
``api/<name>.md`` beside the API file becomes a Markdown note at the top left of the UI graph (the
checkpoint / adapter to get, what the workflow shows). ``--check`` only compares and exits 1 when a
UI file is missing or differs from what would be written (the test suite runs this).

Layout: one column per graph depth, every node as tall as its widgets, slots and the previews it
shows after a run (images, the FinPercep result text), so nothing overlaps once the workflow ran.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "example_workflows" / "api"
UI_DIR = REPO / "example_workflows"
#: nodes that show image previews in the graph after a run (room is kept for them)
PREVIEW_NODES = {"SaveImage", "PreviewImage", "LoadImage", "FinPercepLoadExampleImage", "FinPercepScoreImage",
                 "FinPercepBestOfN", "FinPercepPDMToInpaintMask", "FinPercepCompareToReference"}
#: nodes with the FinPercep result text box (comfyui_finpercep/web/finpercep.js)
TEXT_NODES = {"FinPercepLoadRewardModel", "FinPercepScoreImage", "FinPercepBestOfN", "FinPercepPDMToInpaintMask",
              "FinPercepLoadSRAdapter", "FinPercepLoadExampleImage", "FinPercepCompareToReference"}
WIDTH, COLUMN, GAP, TITLE = 340, 400, 30, 30
#: room for the previews after a run: Score Image shows overlay and map side by side, Best of N the
#: ranked batch as a grid, the others one image
PREVIEW_HEIGHT = {"FinPercepScoreImage": 190, "FinPercepBestOfN": 250, "FinPercepPDMToInpaintMask": 230}
DEFAULT_PREVIEW, TEXT_HEIGHT = 270, 96
#: a column taller than this continues in a new column to its right (keeps the graph near 16:9)
MAX_COLUMN = 1000
NOTE_TYPE = "MarkdownNote"
#: API twin -> the template's file name (= its card title in the template browser); the number
#: orders the cards: the workflows that run with nothing downloaded come first
TEMPLATES = {
    "finpercep_score": "1 Score an image",
    "finpercep_best_of_n": "2 Best of N candidates",
    "finpercep_upscale_model_score": "3 Upscale with a model and score",
    "finpercep_fix_where_bad": "4 Fix where bad (needs SD 1.5)",
    "finpercep_upscale_score_fix": "5 Upscale, score, fix (needs SD 1.5 and an SR adapter)",
    "finpercep_compare": "6 Compare to a reference (PSNR, SSIM, LPIPS, DISTS)",
}
#: files a loader widget may name that have a public download: the frontend's missing-model dialog
#: offers them (node ``properties.models``: name, url, directory of models/)
MODELS = {
    "v1-5-pruned-emaonly-fp16.safetensors": {
        "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
               "v1-5-pruned-emaonly-fp16.safetensors",
        "directory": "checkpoints",
    },
}


def ui_path(api_name: str) -> Path:
    """The UI file of API twin ``api_name`` (``finpercep_score`` -> ``example_workflows/1 Score an image.json``)."""
    return UI_DIR / f"{TEMPLATES[api_name]}.json"


def node_height(cls: str, n_widgets: int, n_slots: int, n_multiline: int = 0) -> int:
    """Body height (below the title) of a node: slots, widgets (multi-line text boxes 90 px), then
    the previews it shows."""
    h = 12 + 22 * n_slots + 28 * (n_widgets - n_multiline) + 90 * n_multiline
    if cls in TEXT_NODES:
        h += TEXT_HEIGHT
    if cls in PREVIEW_NODES:
        h += PREVIEW_HEIGHT.get(cls, DEFAULT_PREVIEW)
    return h


def _depths(graph: dict) -> dict[str, int]:
    """Column of each node: sinks at their longest path from a source, every other node one column
    left of its nearest consumer (so loaders sit next to the node they feed, not all in column 0)."""
    depth: dict[str, int] = {}

    def d(nid: str) -> int:
        if nid not in depth:
            ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(u) for u in ups), default=-1)
        return depth[nid]

    for nid in graph:
        d(nid)
    consumers: dict[str, list[str]] = {n: [] for n in graph}
    for nid, node in graph.items():
        for v in node["inputs"].values():
            if isinstance(v, list):
                consumers[v[0]].append(nid)
    late: dict[str, int] = {}

    def l(nid: str) -> int:
        if nid not in late:
            late[nid] = min((l(c) for c in consumers[nid]), default=depth[nid] + 1) - 1
        return late[nid]

    return {nid: l(nid) for nid in graph}


def widget_names(spec: dict) -> list[tuple[str, list]]:
    """(name, type spec) of the inputs shown as widgets, in the editor's order."""
    out = []
    for section in ("required", "optional"):
        for name in spec.get("input_order", {}).get(section, []):
            t = spec["input"][section][name]
            kind = t[0]
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                out.append((name, t))
    return out


def convert(graph: dict, info: dict, note: str | None = None) -> dict:
    depth = _depths(graph)
    top = 20
    note_node = None
    if note:
        lines = sum(max(1, -(-len(line) // 52)) for line in note.strip().splitlines())
        note_h = 40 + 19 * lines
        note_node = {"id": len(graph) + 1, "type": NOTE_TYPE, "pos": [40, top + TITLE], "size": [WIDTH, note_h],
                     "flags": {}, "order": len(graph), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                     "widgets_values": [note.strip() + "\n"], "color": "#432", "bgcolor": "#653"}
        top += TITLE + note_h + GAP
    ids = {nid: i + 1 for i, nid in enumerate(sorted(graph, key=lambda n: (depth[n], int(n))))}
    columns: dict[int, list[int]] = {}
    nodes, links = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    # links first (ids in input order of the consumers)
    pending = []
    for nid in sorted(graph, key=lambda n: ids[n]):
        for name, v in graph[nid]["inputs"].items():
            if isinstance(v, list):
                pending.append((nid, name, v[0], int(v[1])))
    link_of: dict[tuple[str, str], int] = {}
    for k, (nid, name, src, slot) in enumerate(pending, start=1):
        src_type = info[graph[src]["class_type"]]["output"][slot]
        links.append([k, ids[src], slot, ids[nid], None, src_type])
        link_of[(nid, name)] = k
        out_links.setdefault((src, slot), []).append(k)
    for order, nid in enumerate(sorted(graph, key=lambda n: ids[n])):
        node = graph[nid]
        cls = node["class_type"]
        spec = info[cls]
        widgets = widget_names(spec)
        widget_set = {w for w, _ in widgets}
        inputs, values = [], []
        slot = 0
        for section in ("required", "optional"):
            for name in spec.get("input_order", {}).get(section, []):
                t = spec["input"][section][name]
                linked = (nid, name) in link_of
                if name in widget_set and not linked:
                    continue
                entry = {"name": name, "type": t[0] if isinstance(t[0], str) else "COMBO",
                         "link": link_of.get((nid, name))}
                if name in widget_set:
                    entry["widget"] = {"name": name}
                inputs.append(entry)
                if linked:
                    links[link_of[(nid, name)] - 1][4] = slot
                slot += 1
        for name, t in widgets:
            v = node["inputs"].get(name)
            if v is None or isinstance(v, list):  # linked or left out: the widget keeps its default
                v = t[1].get("default") if len(t) > 1 else None
            values.append(v)
            opts = t[1] if len(t) > 1 else {}
            if opts.get("control_after_generate"):
                values.append("fixed")
            if opts.get("image_upload"):
                values.append("image")
        outputs = []
        for i, (otype, oname) in enumerate(zip(spec["output"], spec["output_name"])):
            entry = {"name": oname, "type": otype, "links": out_links.get((nid, i), [])}
            if spec.get("output_is_list", [False] * len(spec["output"]))[i]:
                entry["shape"] = 6
            outputs.append(entry)
        multiline = sum(1 for _, t in widgets if len(t) > 1 and isinstance(t[1], dict) and t[1].get("multiline"))
        height = node_height(cls, len(widgets), max(len(inputs), len(outputs)), multiline)
        columns.setdefault(depth[nid], []).append(len(nodes))
        entry = {
            "id": ids[nid], "type": cls, "pos": [0, 0], "size": [WIDTH, height], "flags": {},
            "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": cls}, "widgets_values": values,
        }
        models = [{"name": v, **MODELS[v]} for v in values if isinstance(v, str) and v in MODELS]
        if models:
            entry["properties"]["models"] = models
        title = node.get("_meta", {}).get("title")
        if title and title != spec.get("display_name", cls):
            entry["title"] = title
        nodes.append(entry)
    x = 40
    for col in sorted(columns):
        y = top if col == 0 else 20
        for k in columns[col]:
            h = TITLE + nodes[k]["size"][1] + GAP
            if y + h > MAX_COLUMN + 20 and y > (top if col == 0 else 20):
                x, y = x + COLUMN, 20
            nodes[k]["pos"] = [x, y + TITLE]
            y += h
        x += COLUMN
    if note_node is not None:
        nodes.append(note_node)
    return {
        "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "finpercep_api_twin": "api/"}, "version": 0.4,
    }


def main() -> int:
    info = json.loads(Path(sys.argv[1]).read_text())
    check = "--check" in sys.argv
    bad = []
    apis = sorted(API_DIR.glob("*.json"))
    unnamed = [a.stem for a in apis if a.stem not in TEMPLATES]
    if unnamed:
        print("API workflows without a title in TEMPLATES (tests/comfyui/api_to_ui.py):", ", ".join(unnamed))
        return 1
    for api in apis:
        note_file = api.with_suffix(".md")
        ui = convert(json.loads(api.read_text()), info, note_file.read_text() if note_file.is_file() else None)
        ui["extra"]["finpercep_api_twin"] = f"api/{api.name}"
        text = json.dumps(ui, indent=1) + "\n"
        target = ui_path(api.stem)
        if check:
            if not target.is_file() or target.read_text() != text:
                bad.append(target.name)
        else:
            target.write_text(text)
    if bad:
        print("UI workflows out of date (run tests/comfyui/api_to_ui.py OBJECT_INFO.json):", ", ".join(bad))
        return 1
    stale = sorted(p.name for p in UI_DIR.glob("*.json") if p.stem not in TEMPLATES.values())
    if stale:
        print("UI workflows without an API twin in example_workflows/api/:", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
