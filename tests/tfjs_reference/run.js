// Reference runtime for the TF.js importer's equivalence tests (test-only; no network).
//
//   node run.js MODEL.json OUTPUT_NODE INPUT.f32 N,H,W,C VECTOR.f32 OUT_PREFIX
//
// Loads the graph model from local files (model.json and the .bin shards next to it, through
// tf.io.fromMemory), evaluates OUTPUT_NODE at the input (raw little-endian float32, NHWC) with
// the pure-JS CPU backend, and writes OUT_PREFIX.out.f32 (the output), OUT_PREFIX.grad.f32 (the
// gradient w.r.t. the input of sum(output * VECTOR)) and OUT_PREFIX.json (the output's shape).
'use strict';
const fs = require('fs');
const path = require('path');
const tf = require('@tensorflow/tfjs');

function readF32(file) {
  const b = fs.readFileSync(file);
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

function writeF32(file, arr) {
  fs.writeFileSync(file, Buffer.from(arr.buffer, arr.byteOffset, arr.byteLength));
}

async function main() {
  const [modelJson, outputNode, inputFile, shapeArg, vectorFile, outPrefix] = process.argv.slice(2);
  if (!outPrefix) {
    console.error('usage: node run.js MODEL.json OUTPUT_NODE INPUT.f32 N,H,W,C VECTOR.f32 OUT_PREFIX');
    process.exit(2);
  }
  await tf.setBackend('cpu');
  const doc = JSON.parse(fs.readFileSync(modelJson, 'utf8'));
  const folder = path.dirname(modelJson);
  const specs = [];
  const buffers = [];
  for (const group of doc.weightsManifest) {
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(folder, p)));
    specs.push(...group.weights);
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: doc.modelTopology, weightSpecs: specs, weightData,
    format: doc.format, generatedBy: doc.generatedBy, convertedBy: doc.convertedBy,
    signature: doc.signature,
  }));
  const shape = shapeArg.split(',').map(Number);
  const x = tf.tensor(readF32(inputFile), shape, 'float32');
  const out = model.execute(x, outputNode);
  const v = tf.tensor(readF32(vectorFile), out.shape, 'float32');
  const grad = tf.grad((inp) => tf.sum(tf.mul(model.execute(inp, outputNode), v)))(x);
  writeF32(`${outPrefix}.out.f32`, await out.data());
  writeF32(`${outPrefix}.grad.f32`, await grad.data());
  fs.writeFileSync(`${outPrefix}.json`, JSON.stringify({ shape: out.shape, backend: tf.getBackend(), version: tf.version.tfjs }));
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
