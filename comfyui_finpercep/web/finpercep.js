// FinPercep: show the text results of the FinPercep nodes on the canvas (scores, the chosen
// candidate and every reward, mask coverage, what was loaded, the time of large images).
//
// The nodes return their text as a UI output (ui.PreviewText: output.text). The frontend keeps UI
// outputs in its node-output store (app.nodeOutputs, by node locator): it fills it on "executed",
// saves and restores it with each workflow tab, and draws image previews from it. It draws no text
// for nodes other than its own "Preview Any", so this extension gives each FinPercep node a read-only
// text box and fills it from that store on every redraw: the text survives tab switches and cached
// runs exactly like the image previews do. Nothing is saved in the workflow or sent in the prompt.
//
// It also puts FinPercep's template cards in their numbered order ("1 Score an image" first: what
// runs with nothing downloaded). ComfyUI 0.3.75 lists a node pack's example_workflows/*.json in
// directory order and the frontend keeps that order; only FinPercep's own list is sorted.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const FIRST_TEMPLATE = "1 Score an image";
const listTemplates = api.getWorkflowTemplates?.bind(api);
if (listTemplates) {
  api.getWorkflowTemplates = async () => {
    const all = await listTemplates();
    for (const names of Object.values(all ?? {})) {
      if (Array.isArray(names) && names.includes(FIRST_TEMPLATE)) {
        names.sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
      }
    }
    return all;
  };
}

const TEXT_NODES = new Set([
  "FinPercepLoadRewardModel",
  "FinPercepScoreImage",
  "FinPercepBestOfN",
  "FinPercepPDMToInpaintMask",
  "FinPercepLoadSRAdapter",
  "FinPercepLoadExampleImage",
  "FinPercepCompareToReference",
]);
const WIDGET = "finpercep_result";

function resultWidget(node) {
  const found = node.widgets?.find((w) => w.name === WIDGET);
  if (found) return found;
  const el = document.createElement("textarea");
  el.readOnly = true;
  el.placeholder = "result (after Run)";
  el.className = "comfy-multiline-input finpercep-result";
  Object.assign(el.style, {
    fontFamily: "monospace", fontSize: "11px", lineHeight: "1.3", resize: "none",
    width: "100%", height: "100%", boxSizing: "border-box", whiteSpace: "pre-wrap",
  });
  const widget = node.addDOMWidget(WIDGET, "finpercep_text", el, {
    serialize: false, // neither in the saved workflow nor in the prompt
    hideOnZoom: false,
    getValue: () => el.value,
    setValue: (v) => { el.value = v ?? ""; },
    getMinHeight: () => 56,
  });
  widget.serialize = false;
  return widget;
}

// The store's key of a node: its id in the root graph, "<subgraph id>:<id>" inside a subgraph.
function locatorId(node) {
  const root = app.rootGraph ?? app.graph;
  const graph = node.graph;
  return graph && root && graph !== root && graph.id ? `${graph.id}:${node.id}` : String(node.id);
}

function asText(text) {
  if (text == null) return null;
  return Array.isArray(text) ? text.join("\n") : String(text);
}

function show(node, text) {
  if (text == null) return;
  const widget = resultWidget(node);
  if (widget.value !== text) {
    widget.value = text;
    node.setDirtyCanvas?.(true, true);
  }
}

app.registerExtension({
  name: "FinPercep.ResultText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.has(nodeData.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
      resultWidget(this);
      return r;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      onExecuted?.apply(this, arguments);
      show(this, asText(output?.text));
    };
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function () {
      const r = onDrawForeground?.apply(this, arguments);
      show(this, asText(app.nodeOutputs?.[locatorId(this)]?.text)); // restored outputs (tab switch)
      return r;
    };
  },
});
