// "Try the model": chapter 8's ONNX file, run in the browser with ONNX Runtime Web (vendored in
// ../ort/, WebAssembly only, one thread), on a drawing or an uploaded image, preprocessed as
// chapter 9's server does (preprocess.js). Nothing leaves the browser.
import * as ort from "../ort/ort.wasm.bundle.min.mjs";
import { preprocessRGBA, softmax } from "./preprocess.js";

const MODELS = new URL("../../models/", import.meta.url);
const MAX_PIXELS = 4096 * 4096; // the server's limit (serving/upload.py)
// Only the .wasm is fetched: the bundle carries its own loader (no ort-wasm-*.mjs needed).
ort.env.wasm.wasmPaths = { wasm: new URL("../ort/ort-wasm-simd-threaded.wasm", import.meta.url).href };
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a static site lacks
ort.env.logLevel = "error";

const $ = (id) => document.getElementById(id);
const status = $("try-status");
let manifest = null;
let session = null;

function setStatus(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

async function sha256Hex(bytes) {
  if (!globalThis.crypto || !crypto.subtle) return null; // not a secure context (file://)
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function load() {
  const response = await fetch(new URL("manifest.json", MODELS));
  if (!response.ok) {
    throw Object.assign(new Error("this build of the book has no models/manifest.json: build it with `make book`, which stages chapter 8's model"), { state: "missing" });
  }
  manifest = await response.json();
  if (!manifest.available) throw Object.assign(new Error(manifest.reason), { state: "missing" });
  const bytes = new Uint8Array(await (await fetch(new URL(manifest.file, MODELS))).arrayBuffer());
  const digest = await sha256Hex(bytes);
  if (digest !== null && digest !== manifest.sha256) {
    throw new Error(`${manifest.file} does not match its SHA-256 (${manifest.sha256.slice(0, 12)}…): the download was damaged; reload the page`);
  }
  session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
  const checked = digest === null ? "SHA-256 not checked (no secure context)" : `SHA-256 ${digest.slice(0, 12)}… verified`;
  setStatus("ready", `Ready: chapter 8's ${manifest.file} (${(manifest.bytes / 1e6).toFixed(2)} MB, ${manifest.quick ? "quick-mode run" : "full run"}, ${checked}), ONNX Runtime Web ${ort.env.versions.web}, in your browser.`);
}

async function classify(rgba, width, height) {
  if (!session) throw new Error("the model is not loaded");
  const { pixels, inverted, input } = preprocessRGBA(rgba, width, height, manifest.mean, manifest.std);
  const feeds = { [manifest.input]: new ort.Tensor("float32", input, [1, 1, manifest.size, manifest.size]) };
  const logits = Array.from((await session.run(feeds))[manifest.output].data);
  const probs = softmax(logits);
  const top3 = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
  show(pixels, inverted, width, height, top3);
  api.last = { pixels: Array.from(pixels), input: Array.from(input), logits, probs, inverted, width, height, top3: top3.map(([, i]) => i) };
  return api.last;
}

function show(pixels, inverted, width, height, top3) {
  const ctx = $("try-input").getContext("2d");
  const image = ctx.createImageData(28, 28);
  pixels.forEach((v, i) => image.data.set([v, v, v, 255], 4 * i));
  ctx.putImageData(image, 0, 0);
  $("try-note").textContent = `${width}×${height} pixels in; ${inverted ? "light background, so inverted" : "dark background, not inverted"}${width === 28 && height === 28 ? "; 28×28, used as it is" : "; cropped to the garment, fitted to 28×28, contrast stretched"}.`;
  const list = $("try-top3");
  list.replaceChildren(...top3.map(([p, i]) => {
    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "try-bar";
    bar.style.width = `${(100 * p).toFixed(1)}%`;
    item.append(`${manifest.classes[i]}: ${(100 * p).toFixed(1)}%`, bar);
    return item;
  }));
  list.dataset.count = String(Number(list.dataset.count) + 1);
}

function readCanvas(canvas) {
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  return ctx.getImageData(0, 0, canvas.width, canvas.height).data;
}

async function classifyFile(file) {
  const head = new Uint8Array(await file.slice(0, 8).arrayBuffer());
  const png = [0x89, 0x50, 0x4e, 0x47].every((b, i) => head[i] === b);
  const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  if (!png && !jpeg) throw new Error(`${file.name} is not a PNG or JPEG image`);
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  if (bitmap.width * bitmap.height > MAX_PIXELS) throw new Error(`${bitmap.width}×${bitmap.height} is more than the ${MAX_PIXELS.toLocaleString()} pixels allowed`);
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0); // transparent pixels keep their alpha; preprocess composites them
  const { data } = ctx.getImageData(0, 0, bitmap.width, bitmap.height, { colorSpace: "srgb" });
  return classify(data, bitmap.width, bitmap.height);
}

async function guarded(work) {
  try {
    return await work();
  } catch (err) {
    $("try-note").textContent = `Could not classify: ${err.message}`;
    throw err;
  }
}

// --- drawing ------------------------------------------------------------------------------------
const draw = $("try-draw");
const pen = draw.getContext("2d", { willReadFrequently: true });
function clear() {
  pen.fillStyle = "#fff";
  pen.fillRect(0, 0, draw.width, draw.height);
}
clear();
let last = null;
function point(event) {
  const box = draw.getBoundingClientRect();
  return [((event.clientX - box.left) * draw.width) / box.width, ((event.clientY - box.top) * draw.height) / box.height];
}
draw.addEventListener("pointerdown", (event) => {
  draw.setPointerCapture(event.pointerId);
  last = point(event);
});
draw.addEventListener("pointermove", (event) => {
  if (!last) return;
  const next = point(event);
  pen.strokeStyle = "#000";
  pen.lineCap = pen.lineJoin = "round";
  pen.lineWidth = Number($("try-brush").value);
  pen.beginPath();
  pen.moveTo(...last);
  pen.lineTo(...next);
  pen.stroke();
  last = next;
});
for (const type of ["pointerup", "pointercancel"]) {
  draw.addEventListener(type, () => {
    if (!last) return;
    last = null;
    if (session) guarded(() => classify(readCanvas(draw), draw.width, draw.height)).catch(() => {});
  });
}
// The keyboard: arrows draw from a pen that starts in the middle, Space lifts or lowers it,
// Enter classifies, Escape clears (and puts the pen back in the middle).
let keyPen = { at: [draw.width / 2, draw.height / 2], down: true };
const STEPS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
draw.addEventListener("keydown", (event) => {
  if (event.key in STEPS) {
    const [dx, dy] = STEPS[event.key];
    const step = event.shiftKey ? 40 : 10;
    const [x0, y0] = keyPen.at;
    const next = [Math.min(draw.width, Math.max(0, x0 + dx * step)), Math.min(draw.height, Math.max(0, y0 + dy * step))];
    if (keyPen.down) {
      pen.strokeStyle = "#000";
      pen.lineCap = pen.lineJoin = "round";
      pen.lineWidth = Number($("try-brush").value);
      pen.beginPath();
      pen.moveTo(x0, y0);
      pen.lineTo(...next);
      pen.stroke();
    }
    keyPen.at = next;
  } else if (event.key === " ") {
    keyPen.down = !keyPen.down;
    $("try-note").textContent = keyPen.down ? "Pen down: the arrows draw." : "Pen up: the arrows move without drawing.";
  } else if (event.key === "Enter") {
    if (session) guarded(() => classify(readCanvas(draw), draw.width, draw.height)).catch(() => {});
  } else if (event.key === "Escape") {
    clear();
    keyPen = { at: [draw.width / 2, draw.height / 2], down: true };
    $("try-note").textContent = "Cleared.";
  } else {
    return; // Tab and everything else keep their usual meaning
  }
  event.preventDefault();
});
$("try-clear").addEventListener("click", clear);
$("try-file").addEventListener("change", (event) => {
  const [file] = event.target.files;
  if (file && session) guarded(() => classifyFile(file)).catch(() => {});
});

// For the course's browser test, and for the curious (open the console): tryModel.last.
const api = { ready: null, last: null, classify, classifyFile };
window.tryModel = api;
api.ready = load().then(
  () => true,
  (err) => {
    setStatus(err.state || "error", `The model is not available: ${err.message}`);
    for (const id of ["try-file", "try-clear"]) $(id).disabled = true;
    return false;
  },
);
