// Times ONNX Runtime (onnxruntime-node, CPU) on model files with the ids peers.py wrote.
//   node bench/peers/ort.mjs --ids ids.json --threads 1,2 --repeats 5 model-fp32.onnx model-int8.onnx
// Prints {"rows": [{peer, threads, seconds}], "logits": {peer: [[...]]}} on stdout.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import ort from "onnxruntime-node";

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  if (i < 0) return def;
  const v = args[i + 1];
  args.splice(i, 2);
  return v;
};
const idsPath = opt("--ids");
const threads = opt("--threads", "1,2").split(",").map(Number);
const repeats = Number(opt("--repeats", "5"));
const { ids } = JSON.parse(readFileSync(idsPath, "utf8"));
const [batch, length] = [ids.length, ids[0].length];
const tensor = new ort.Tensor("int64", BigInt64Array.from(ids.flat().map(BigInt)), [batch, length]);

const rows = [];
const logits = {};
for (const file of args) {
  const peer = "ort-" + basename(file).replace(/^model-/, "").replace(/\.onnx$/, "");
  for (const t of threads) {
    const session = await ort.InferenceSession.create(file, {
      intraOpNumThreads: t, interOpNumThreads: 1, executionMode: "sequential",
      graphOptimizationLevel: "all",
    });
    let out = await session.run({ ids: tensor });  // warm-up
    const times = [];
    for (let r = 0; r < repeats; r++) {
      const start = process.hrtime.bigint();
      out = await session.run({ ids: tensor });
      times.push(Number(process.hrtime.bigint() - start) / 1e9);
    }
    times.sort((a, b) => a - b);
    const seconds = times[Math.floor(times.length / 2)];
    rows.push({ peer, threads: t, seconds });
    process.stderr.write(`${peer.padEnd(13)} threads=${t}  ${(seconds * 1e3).toFixed(1).padStart(8)} ms\n`);
    const data = Array.from(out.logits.data);
    const n = out.logits.dims[1];
    logits[peer] = Array.from({ length: batch }, (_, b) => data.slice(b * n, (b + 1) * n));
    await session.release();
  }
}
console.log(JSON.stringify({ rows, logits }));
