// FinPercep: show the text results of the FinPercep nodes on the canvas (scores, the chosen
// candidate and every reward, mask coverage, what was loaded). The nodes send it as ui.text
// (ui.PreviewText); ComfyUI's frontend displays ui.text only for its own "Preview Any" node, so
// this extension gives each FinPercep node a read-only text box that the result fills. Images
// (overlay, PDM, mask, ranked candidates) need nothing: the frontend previews ui.images itself.
import { app } from "../../scripts/app.js";

const TEXT_NODES = new Set([
  "FinPercepLoadRewardModel",
  "FinPercepScoreImage",
  "FinPercepBestOfN",
  "FinPercepPDMToInpaintMask",
  "FinPercepLoadSRAdapter",
  "FinPercepLoadExampleImage",
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
      const text = output?.text;
      if (text == null) return;
      resultWidget(this).value = Array.isArray(text) ? text.join("\n") : String(text);
      this.setDirtyCanvas?.(true, true);
    };
  },
});
