// Reference outputs of the @upscalerjs/esrgan-legacy@1.0.0 models, computed by TensorFlow.js itself.
//
// Run by tests/reference/make_idealo_reference.py (see its docstring); by hand:
//   NODE_PATH=<dir>/node_modules node tests/reference/idealo_tfjs_reference.js <package dir> <in.json> <out.json>
// where <dir> holds `npm install @tensorflow/tfjs@4.11.0` (the version the package's peerDependencies
// name; pure JavaScript, CPU backend) and <package dir> is the extracted npm package ("package/").
//
// in.json: {"runs": [{"model": "div2k/x2", "range": 255}, ...], "height": H, "width": W,
//           "input": [H*W*3 floats in [0, 1], HWC]}
// out.json: {"<model>@<range>": {"shape": [H', W', 3], "output": [floats, HWC], "scale": s,
//            "inputRange": [lo, hi], "outputRange": [lo, hi]}}   (the ranges the package declares)
//
// Each model is loaded with tf.loadLayersModel from its model.json and weight shard (tfjs dequantizes the
// uint8 weights itself), after the package's own setup() registers its custom layers (MultiplyBeta,
// PixelShuffle4x). The image in [0, 1] is multiplied by the run's "range" (UpscalerJS uses the
// package's inputRange: 255 for the RDN models, 1 for the RRDN), fed to model.predict, and the output
// divided by the same number (not clipped).
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

async function loadModel(pkgDir, name) {
  const dir = path.join(pkgDir, 'models', name);
  const json = JSON.parse(fs.readFileSync(path.join(dir, 'model.json'), 'utf8'));
  const specs = [];
  const buffers = [];
  for (const group of json.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(dir, p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = {load: async () => ({modelTopology: json.modelTopology, weightSpecs: specs, weightData,
                                       format: json.format, generatedBy: json.generatedBy,
                                       convertedBy: json.convertedBy})};
  return tf.loadLayersModel(handler);
}

function definitionFor(pkgDir, name) {
  // the package's CommonJS model definitions: src/gans, src/psnr-small, src/div2k/x2 ...
  const file = path.join(pkgDir, 'dist', 'cjs', 'models', 'esrgan-legacy', 'src', name, 'index.js');
  return require(file).default;
}

async function main() {
  const [pkgDir, inPath, outPath] = process.argv.slice(2);
  await tf.setBackend('cpu');
  const spec = JSON.parse(fs.readFileSync(inPath, 'utf8'));
  const out = {};
  for (const run of spec.runs) {
    const name = run.model;
    const def = definitionFor(pkgDir, name);
    if (def.setup) def.setup(tf);
    const model = await loadModel(pkgDir, name);
    const x = tf.tensor4d(spec.input, [1, spec.height, spec.width, 3]).mul(run.range);
    const y = model.predict(x).div(run.range);
    out[`${name}@${run.range}`] = {shape: y.shape.slice(1), output: Array.from(await y.data()), inputRange: def.inputRange,
                 outputRange: def.outputRange, scale: def.scale};
    console.error(`${name} x${run.range}: ${JSON.stringify(y.shape)} scale ${def.scale}, declared input range ${def.inputRange}`);
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
