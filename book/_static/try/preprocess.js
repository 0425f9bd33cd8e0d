// The preprocessing of chapter 9's server (serving/upload.py), ported step by step so that
// the browser feeds the model what the server would. Pure functions, no DOM: the page's script
// and the tests call them. Integer steps follow Pillow's C code (Convert.c, Paste.c,
// Resample.c), so for the same RGBA pixels the 28×28 result is the server's, byte for byte.
//
//   1. greyscale: ITU-R 601 luma (Pillow's "L"), composited onto white by the alpha;
//   2. polarity: invert when the border is light (mean above 127);
//   3. a 28×28 image is used as it is; a larger one is cropped to its content, its longer side
//      resized to 28 (Lanczos, aspect kept), padded with black, centred, contrast-stretched;
//   4. scaled to [0, 1] and normalised with the training mean and std (float32).

export const SIZE = 28;

/** Pillow's Image.composite(grey, white, alpha) for one pixel: DIV255(255·(255−a) + v·a). */
export function blendOnWhite(v, a) {
  const t = 255 * (255 - a) + v * a + 128;
  return ((t >> 8) + t) >> 8;
}

/** RGBA bytes (row-major, width × height) → greyscale bytes, as upload.to_grey: the luma of
 * the colour (Pillow's "L", ITU-R 601 in 16-bit fixed point), then composited onto white by its
 * alpha. */
export function toGrey(rgba, width, height) {
  const grey = new Uint8Array(width * height);
  for (let i = 0; i < grey.length; i++) {
    const luma = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >>> 16;
    const a = rgba[4 * i + 3];
    grey[i] = a === 255 ? luma : blendOnWhite(luma, a);
  }
  return grey;
}

/** True when the border is light (mean above 127), as upload.needs_inversion. */
export function needsInversion(grey, width, height) {
  let sum = 0;
  for (let x = 0; x < width; x++) sum += grey[x] + grey[(height - 1) * width + x];
  for (let y = 0; y < height; y++) sum += grey[y * width] + grey[y * width + width - 1];
  return sum / (2 * width + 2 * height) > 127;
}

/** The smallest box holding every pixel brighter than 0.1 × the brightest, as
 * upload.crop_to_content; returns {grey, width, height}. */
export function cropToContent(grey, width, height, threshold = 0.1) {
  let top = 0;
  for (const v of grey) top = Math.max(top, v);
  const limit = threshold * top;
  let x0 = width, x1 = -1, y0 = height, y1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (grey[y * width + x] > limit) {
        x0 = Math.min(x0, x); x1 = Math.max(x1, x);
        y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      }
    }
  }
  if (x1 < 0) return { grey, width, height };
  const w = x1 - x0 + 1, h = y1 - y0 + 1;
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) out.set(grey.subarray((y0 + y) * width + x0, (y0 + y) * width + x1 + 1), y * w);
  return { grey: out, width: w, height: h };
}

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function lanczos(x) {
  const sinc = (t) => (t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc (Resample.c) for one axis.
function coefficients(inSize, outSize) {
  const PRECISION = 22;
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 3 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0) kk[xx * ksize + x] /= ww;
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  const fixed = new Float64Array(kk.length);
  for (let i = 0; i < kk.length; i++) {
    fixed[i] = Math.trunc(kk[i] < 0 ? -0.5 + kk[i] * (1 << PRECISION) : 0.5 + kk[i] * (1 << PRECISION));
  }
  return { bounds, k: fixed, ksize };
}

function clip8(sum) {
  return Math.min(255, Math.max(0, Math.floor(sum / (1 << 22))));
}

/** Pillow's Image.resize(..., LANCZOS) of an 8-bit greyscale image: horizontal pass first,
 * 8-bit intermediate, then vertical (ImagingResampleInner). */
export function resizeLanczos(grey, width, height, outWidth, outHeight) {
  if (width === outWidth && height === outHeight) return grey.slice();
  const horiz = coefficients(width, outWidth);
  const vert = coefficients(height, outHeight);
  const needH = outWidth !== width, needV = outHeight !== height;
  let img = grey, w = width;
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[2 * outHeight - 2] + vert.bounds[2 * outHeight - 1];
  const vBounds = vert.bounds.slice();
  if (needH) {
    for (let i = 0; i < outHeight; i++) vBounds[2 * i] -= yFirst;
    const rows = yLast - yFirst;
    const tmp = new Uint8Array(outWidth * rows);
    for (let yy = 0; yy < rows; yy++) {
      const row = (yy + yFirst) * width;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = horiz.bounds[2 * xx], xmax = horiz.bounds[2 * xx + 1];
        let sum = 1 << 21;
        for (let x = 0; x < xmax; x++) sum += img[row + x + xmin] * horiz.k[xx * horiz.ksize + x];
        tmp[yy * outWidth + xx] = clip8(sum);
      }
    }
    img = tmp;
    w = outWidth;
  }
  if (!needV) return img;
  const out = new Uint8Array(w * outHeight);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = vBounds[2 * yy], ymax = vBounds[2 * yy + 1];
    for (let xx = 0; xx < w; xx++) {
      let sum = 1 << 21;
      for (let y = 0; y < ymax; y++) sum += img[(y + ymin) * w + xx] * vert.k[yy * vert.ksize + y];
      out[yy * w + xx] = clip8(sum);
    }
  }
  return out;
}

/** Longer side to 28 (Lanczos, aspect kept), padded with black, centred: upload.fit_to_square
 * (Pillow's ImageOps.pad, with Python's rounding). */
export function fitToSquare(grey, width, height, size = SIZE) {
  if (width === size && height === size) return grey.slice();
  let w = size, h = size;
  const ratio = width / height;
  if (ratio !== 1) {
    if (ratio > 1) h = roundHalfEven((height / width) * size);
    else w = roundHalfEven((width / height) * size);
  }
  const resized = Math.min(w, h) === 0 ? new Uint8Array(w * h) : resizeLanczos(grey, width, height, w, h);
  if (w === size && h === size) return resized;
  const out = new Uint8Array(size * size);
  const x0 = w !== size ? roundHalfEven((size - w) * 0.5) : 0;
  const y0 = w !== size ? 0 : roundHalfEven((size - h) * 0.5);
  for (let y = 0; y < h; y++) out.set(resized.subarray(y * w, y * w + w), (y0 + y) * size + x0);
  return out;
}

/** Scale so that the brightest pixel is 255, in float32 with round-half-even (NumPy's rint). */
export function stretchContrast(grey) {
  let top = 0;
  for (const v of grey) top = Math.max(top, v);
  if (top === 0 || top === 255) return grey.slice();
  const factor = Math.fround(255 / top);
  return grey.map((v) => roundHalfEven(Math.fround(v * factor)));
}

/** RGBA pixels → {pixels: Uint8Array(784), inverted, input: Float32Array(784)}. */
export function preprocessRGBA(rgba, width, height, mean, std, invert = null) {
  let grey = toGrey(rgba, width, height);
  const inverted = invert === null ? needsInversion(grey, width, height) : invert;
  if (inverted) grey = grey.map((v) => 255 - v);
  if (width !== SIZE || height !== SIZE) {
    const crop = cropToContent(grey, width, height);
    grey = stretchContrast(fitToSquare(crop.grey, crop.width, crop.height));
  }
  const m = Math.fround(mean), s = Math.fround(std);
  const input = Float32Array.from(grey, (v) => Math.fround(Math.fround(Math.fround(v / 255) - m) / s));
  return { pixels: grey, inverted, input };
}

/** Softmax of the logits, in double precision. */
export function softmax(logits) {
  const top = Math.max(...logits);
  const exp = Array.from(logits, (v) => Math.exp(v - top));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp.map((v) => v / sum);
}
