"""Rendered text lines and the PP-OCR pre/post-processing of rapidocr-onnxruntime 1.4.4.

Shared by tests/python/test_prune_depth.py and bench/prune.py.

- `render_lines(n, seed)`: n seeded text lines (words in three cases, digits, dates, prices,
  punctuation) drawn with Pillow in DejaVu Sans / Serif / Mono, regular and bold, at 18-40 px,
  with small margins, grey levels and light noise. `font_note()` says which fonts were found
  (Pillow's built-in font at the same sizes when DejaVu is absent).
- `cls_batch` / `rec_batches`: the preprocessing of rapidocr's TextClassifier.resize_norm_img and
  TextRecognizer.resize_norm_img (BGR input, OpenCV INTER_LINEAR resize to height 48, /255,
  -0.5, /0.5, zero padding on the right; the recogniser pads each batch of 6, sorted by aspect
  ratio, to the widest ratio in it and at least 320/48). The resize is OpenCV's fixed-point
  INTER_LINEAR redone in numpy (no OpenCV needed): on these lines 0.5 % of the pixels differ from
  cv2.resize by 1.
- `ctc_decode`: rapidocr's CTCLabelDecode (argmax, merge repeats, drop blank 0), with the
  character list of the model's metadata_props 'character' plus the blank and the space.
- `char_accuracy`: 1 - (summed edit distance) / (summed reference length), and line accuracy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

FONT_DIR = "/usr/share/fonts/truetype/dejavu"
FONT_FILES = {
    "Sans": "DejaVuSans.ttf",
    "Sans-Bold": "DejaVuSans-Bold.ttf",
    "Serif": "DejaVuSerif.ttf",
    "Serif-Bold": "DejaVuSerif-Bold.ttf",
    "Mono": "DejaVuSansMono.ttf",
    "Mono-Bold": "DejaVuSansMono-Bold.ttf",
}

WORDS = (
    "the of and to in is for on that by with from at as are this be or an was it not which have "
    "you all can will one has more about their new other time they there some when what been "
    "only use data system model network table price total invoice order number date page name "
    "street road city north south report value power water light green black white paper "
    "market office school river station window garden summer winter morning evening family "
    "answer picture letter machine engine signal memory battery camera screen button module "
    "layer block weight output input result check receipt amount account balance payment "
    "customer service delivery address phone email ticket flight train hotel coffee bread "
    "apple orange cheese butter sugar salt pepper kitchen doctor nurse patient hospital open "
    "close start stop quick brown fox jumps over lazy dog hello world welcome thanks please "
    "exit entrance warning danger notice private parking Monday Friday January October"
).split()
PUNCT_AFTER = [",", ".", ":", ";", "!", "?", ")", "%"]


def _token(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.62:
        w = WORDS[rng.integers(len(WORDS))]
        case = rng.random()
        if case < 0.2:
            w = w.upper()
        elif case < 0.55:
            w = w.capitalize()
        if rng.random() < 0.18:
            w += PUNCT_AFTER[rng.integers(len(PUNCT_AFTER))]
        return w
    if kind < 0.74:
        return str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
    if kind < 0.82:
        return f"{int(rng.integers(1, 500))}.{int(rng.integers(0, 100)):02d}"
    if kind < 0.88:
        return f"${int(rng.integers(1, 999))}.{int(rng.integers(0, 100)):02d}"
    if kind < 0.94:
        return f"{int(rng.integers(1990, 2031))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
    return f"#{int(rng.integers(1, 9999))}"


def random_text(rng: np.random.Generator, max_chars: int = 28) -> str:
    n = int(rng.integers(1, 6))
    words: list[str] = []
    for _ in range(n):
        t = _token(rng)
        if words and len(" ".join(words + [t])) > max_chars:
            break
        words.append(t)
    return " ".join(words)


@dataclass
class Line:
    text: str
    font: str
    size: int
    rgb: np.ndarray  # H x W x 3 uint8, upright


_FONT_CACHE: dict = {}


def _font(name: str, size: int):
    from PIL import ImageFont
    key = (name, size)
    if key not in _FONT_CACHE:
        path = os.path.join(FONT_DIR, FONT_FILES.get(name, ""))
        if name in FONT_FILES and os.path.isfile(path):
            _FONT_CACHE[key] = ImageFont.truetype(path, size)
        else:
            _FONT_CACHE[key] = ImageFont.load_default(size)
    return _FONT_CACHE[key]


def available_fonts() -> list[str]:
    have = [k for k, f in FONT_FILES.items() if os.path.isfile(os.path.join(FONT_DIR, f))]
    return have or ["default"]


def font_note() -> str:
    fonts = available_fonts()
    if fonts == ["default"]:
        return "Pillow's built-in font (ImageFont.load_default(size)); DejaVu not found in " + FONT_DIR
    return "DejaVu " + ", ".join(fonts) + " (" + FONT_DIR + ")"


def render_line(text: str, font_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw
    font = _font(font_name, size)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    x0, y0, x1, y1 = probe.textbbox((0, 0), text, font=font)
    ml, mr = (int(v) for v in rng.integers(2, 9, size=2))
    mt, mb = (int(v) for v in rng.integers(2, 7, size=2))
    w, h = (x1 - x0) + ml + mr, (y1 - y0) + mt + mb
    bg = int(rng.integers(205, 256))
    fg = int(rng.integers(0, 70))
    img = Image.new("L", (w, h), bg)
    ImageDraw.Draw(img).text((ml - x0, mt - y0), text, font=font, fill=fg)
    a = np.asarray(img, dtype=np.float32)
    # a slight colour cast per channel, then light Gaussian noise
    tint = rng.uniform(-8, 8, size=3).astype(np.float32)
    sigma = float(rng.uniform(2.0, 7.0))
    rgb = a[:, :, None] + tint[None, None, :] + rng.normal(0.0, sigma, size=(h, w, 3)).astype(np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_lines(n: int, seed: int, charset: set[str] | None = None) -> list[Line]:
    """n seeded text lines. With `charset`, every character of a line is in it (others redrawn)."""
    rng = np.random.default_rng(seed)
    fonts = available_fonts()
    out: list[Line] = []
    while len(out) < n:
        text = random_text(rng)
        if charset is not None and any(c not in charset for c in text):
            continue
        font = fonts[int(rng.integers(len(fonts)))]
        size = int(rng.integers(18, 41))
        out.append(Line(text, font, size, render_line(text, font, size, rng)))
    return out


# ----------------------------------------------------------------------------
# OpenCV's INTER_LINEAR resize of 8-bit images, in numpy

def _linear_coeffs(src: int, dst: int):
    """Source index pairs and 11-bit weights per destination pixel, as OpenCV's generic
    INTER_LINEAR path computes them (float32 source coordinate, border clamped)."""
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    frac = (f - i0).astype(np.float32)
    left = i0 < 0
    frac[left], i0[left] = 0.0, 0
    right = i0 >= src - 1
    frac[right], i0[right] = 0.0, src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    a0 = np.rint((np.float32(1) - frac) * np.float32(2048)).astype(np.int64)
    a1 = np.rint(frac * np.float32(2048)).astype(np.int64)
    return i0, i1, a0, a1


def cv2_resize_linear(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2.resize(img, (width, height)) with the default INTER_LINEAR, for uint8 H x W x C.

    Horizontal pass in int with 11-bit weights, vertical pass with OpenCV's
    ((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2 rounding; an exact 2x
    reduction in both directions is a 2x2 mean (OpenCV switches to INTER_AREA there). Against
    OpenCV 5.0 on random images about 0.3 % of the pixels differ, by 1.
    """
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    a = img.astype(np.int64)
    if h == 2 * height and w == 2 * width:
        s = a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    x0, x1, ax0, ax1 = _linear_coeffs(w, width)
    y0, y1, ay0, ay1 = _linear_coeffs(h, height)
    rows = a[:, x0] * ax0[None, :, None] + a[:, x1] * ax1[None, :, None]
    out = (((ay0[:, None, None] * (rows[y0] >> 4)) >> 16) + ((ay1[:, None, None] * (rows[y1] >> 4)) >> 16) + 2) >> 2
    return out.clip(0, 255).astype(np.uint8)


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """rapidocr reads images as BGR (LoadImage converts PIL/file RGB with COLOR_RGB2BGR)."""
    return np.ascontiguousarray(rgb[:, :, ::-1])


def rotate180(img: np.ndarray) -> np.ndarray:
    """cv2.rotate(img, cv2.ROTATE_180)."""
    return np.ascontiguousarray(img[::-1, ::-1])


def _norm_pad(resized: np.ndarray, c: int, h: int, w: int) -> np.ndarray:
    x = resized.astype(np.float32).transpose((2, 0, 1)) / 255
    x -= 0.5
    x /= 0.5
    pad = np.zeros((c, h, w), dtype=np.float32)
    pad[:, :, : x.shape[2]] = x
    return pad


def cls_norm(bgr: np.ndarray, shape=(3, 48, 192)) -> np.ndarray:
    """rapidocr TextClassifier.resize_norm_img."""
    c, h, w = shape
    ih, iw = bgr.shape[:2]
    ratio = iw / float(ih)
    rw = w if math.ceil(h * ratio) > w else int(math.ceil(h * ratio))
    return _norm_pad(cv2_resize_linear(bgr, rw, h), c, h, w)


def cls_batch(bgrs: list[np.ndarray]) -> np.ndarray:
    return np.stack([cls_norm(b) for b in bgrs]).astype(np.float32)


def rec_norm(bgr: np.ndarray, max_wh_ratio: float, shape=(3, 48, 320)) -> np.ndarray:
    """rapidocr TextRecognizer.resize_norm_img."""
    c, h, _ = shape
    w = int(h * max_wh_ratio)
    ih, iw = bgr.shape[:2]
    ratio = iw / float(ih)
    rw = w if math.ceil(h * ratio) > w else int(math.ceil(h * ratio))
    return _norm_pad(cv2_resize_linear(bgr, rw, h), c, h, w)


def rec_batches(bgrs: list[np.ndarray], batch: int = 6, shape=(3, 48, 320)) -> list[tuple[list[int], np.ndarray]]:
    """rapidocr TextRecognizer.__call__ batching: (image indices, [B,3,48,W] batch) pairs."""
    ratios = np.array([b.shape[1] / float(b.shape[0]) for b in bgrs])
    order = np.argsort(ratios)
    out = []
    for beg in range(0, len(bgrs), batch):
        idx = [int(i) for i in order[beg: beg + batch]]
        max_r = max([shape[2] / shape[1]] + [bgrs[i].shape[1] / bgrs[i].shape[0] for i in idx])
        out.append((idx, np.stack([rec_norm(bgrs[i], max_r, shape) for i in idx]).astype(np.float32)))
    return out


# ----------------------------------------------------------------------------
# recogniser output

def rec_charset(model_path: str) -> list[str]:
    """rapidocr's character list: blank + metadata_props['character'].splitlines() + space."""
    import onnx
    m = onnx.load(model_path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    if "character" not in meta:
        raise ValueError(f"{model_path}: no 'character' key in metadata_props")
    return ["blank"] + meta["character"].splitlines() + [" "]


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """rapidocr CTCLabelDecode: argmax per step, merge repeats, drop the blank (index 0)."""
    idx = probs.argmax(axis=2)
    out = []
    for row in idx:
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        out.append("".join(chars[i] for i in row[keep]))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def norm_text(s: str) -> str:
    """Comparison form: surrounding spaces stripped, runs of spaces merged."""
    return " ".join(s.split())


def char_accuracy(refs: list[str], hyps: list[str]) -> dict:
    """1 - summed edit distance / summed reference length (>= 0), and exact-line accuracy, on
    norm_text forms; also the same ignoring spaces (the recogniser often drops narrow gaps)."""
    refs_n = [norm_text(r) for r in refs]
    hyps_n = [norm_text(h) for h in hyps]
    ed = sum(edit_distance(r, h) for r, h in zip(refs_n, hyps_n))
    total = sum(len(r) for r in refs_n)
    ns = [(r.replace(" ", ""), h.replace(" ", "")) for r, h in zip(refs_n, hyps_n)]
    ed_ns = sum(edit_distance(r, h) for r, h in ns)
    total_ns = sum(len(r) for r, _ in ns)
    return {
        "char_acc": max(0.0, 1.0 - ed / total),
        "line_acc": sum(r == h for r, h in zip(refs_n, hyps_n)) / len(refs_n),
        "char_acc_nospace": max(0.0, 1.0 - ed_ns / total_ns),
        "line_acc_nospace": sum(r == h for r, h in ns) / len(ns),
        "lines": len(refs_n),
        "chars": total,
    }


# ----------------------------------------------------------------------------
# running the models

def cls_eval(sess, lines: list[Line], batch: int = 6) -> dict:
    """Direction accuracy on every line upright (label 0) and rotated by 180 degrees (label 1)."""
    name = sess.get_inputs()[0].name
    imgs, labels = [], []
    for ln in lines:
        bgr = to_bgr(ln.rgb)
        imgs += [bgr, rotate180(bgr)]
        labels += [0, 1]
    preds = []
    for beg in range(0, len(imgs), batch):
        p = sess.run(None, {name: cls_batch(imgs[beg: beg + batch])})[0]
        preds += [int(v) for v in p.argmax(axis=1)]
    labels_a, preds_a = np.array(labels), np.array(preds)
    return {
        "acc": float((labels_a == preds_a).mean()),
        "acc_upright": float((preds_a[labels_a == 0] == 0).mean()),
        "acc_rotated": float((preds_a[labels_a == 1] == 1).mean()),
        "images": len(imgs),
        "preds": preds,
    }


def rec_eval(sess, lines: list[Line], chars: list[str], batch: int = 6) -> dict:
    name = sess.get_inputs()[0].name
    bgrs = [to_bgr(ln.rgb) for ln in lines]
    hyps = [""] * len(lines)
    for idx, x in rec_batches(bgrs, batch):
        out = sess.run(None, {name: x})[0]
        for i, t in zip(idx, ctc_decode(out, chars)):
            hyps[i] = t
    res = char_accuracy([ln.text for ln in lines], hyps)
    res["hyps"] = hyps
    return res


def write_calib(d: str, runs: list[np.ndarray], input_name: str = "x") -> str:
    """Calibration inputs as `optc opt --calib DIR` reads them: DIR/<run>/<input>.npy."""
    for i, x in enumerate(runs):
        sub = os.path.join(d, f"{i:03d}")
        os.makedirs(sub, exist_ok=True)
        np.save(os.path.join(sub, f"{input_name}.npy"), x)
    return d
