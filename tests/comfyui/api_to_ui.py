"""Write the UI-format (LiteGraph) twins of the API-format example workflows.

    python tests/comfyui/api_to_ui.py OBJECT_INFO.json [--check]

workflows/api/<name>.json (what POST /prompt runs) -> workflows/<name>.json (what the ComfyUI editor
opens; ComfyUI also lists workflows/*.json of a custom node as templates). Widget order, output
types and names come from a live server's /object_info. ``--check`` only compares and exits 1 when a
UI file is missing or differs from what would be written (the test suite runs this).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "workflows" / "api"
UI_DIR = REPO / "workflows"


def _depths(graph: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def d(nid: str) -> int:
        if nid not in depth:
            ups = [v[0] for v in graph[nid]["inputs"].values() if isinstance(v, list)]
            depth[nid] = 1 + max((d(u) for u in ups), default=-1)
        return depth[nid]

    for nid in graph:
        d(nid)
    return depth


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


def convert(graph: dict, info: dict) -> dict:
    depth = _depths(graph)
    ids = {nid: i + 1 for i, nid in enumerate(sorted(graph, key=lambda n: (depth[n], int(n))))}
    column: dict[int, int] = {}
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
            if isinstance(v, list):
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
        col = depth[nid]
        row = column.get(col, 0)
        height = 60 + 26 * len(widgets) + 22 * max(len(inputs), len(outputs))
        if cls in ("SaveImage", "PreviewImage"):
            height = 330  # room for the image preview
        column[col] = row + height + 40
        entry = {
            "id": ids[nid], "type": cls, "pos": [40 + 380 * col, 40 + row], "size": [330, height], "flags": {},
            "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": cls}, "widgets_values": values,
        }
        title = node.get("_meta", {}).get("title")
        if title and title != spec.get("display_name", cls):
            entry["title"] = title
        nodes.append(entry)
    return {
        "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
        "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "finpercep_api_twin": "api/"}, "version": 0.4,
    }


def main() -> int:
    info = json.loads(Path(sys.argv[1]).read_text())
    check = "--check" in sys.argv
    bad = []
    for api in sorted(API_DIR.glob("*.json")):
        ui = convert(json.loads(api.read_text()), info)
        ui["extra"]["finpercep_api_twin"] = f"api/{api.name}"
        text = json.dumps(ui, indent=1) + "\n"
        target = UI_DIR / api.name
        if check:
            if not target.is_file() or target.read_text() != text:
                bad.append(target.name)
        else:
            target.write_text(text)
    if bad:
        print("UI workflows out of date (run tests/comfyui/api_to_ui.py OBJECT_INFO.json):", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
