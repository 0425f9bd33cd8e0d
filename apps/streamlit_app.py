"""A web app for the chapter-1 model: pick a test image or upload a photo, see the prediction.

Run it from the repository root, so that Streamlit reads ``.streamlit/config.toml`` (uploads
capped at the API's 8 MB, the server bound to 127.0.0.1 only, no tracebacks in the browser):

    streamlit run apps/streamlit_app.py --server.fileWatcherType none

(the file watcher, which reruns the page when a source file changes, inspects every imported
module on every rerun; older Streamlit releases trip over ``torch.classes`` there, and a deployed
app does not need it; chapter 9 explains.) The model is ``$COURSE_MODEL_PATH`` if set, otherwise the
chapter-1 checkpoint (full, else quick). Uploads go through exactly the preprocessing of the
Flask API (:func:`serving.upload.preprocess_array`), under a decode-memory budget shared by
all sessions, as the API's; the Grad-CAM overlay is chapter 10's.

Sessions: Streamlit serves every browser tab (session) from one process, each on its own thread.
The model is loaded once and shared (``st.cache_resource``) and is only ever used read-only, for
predictions under ``torch.inference_mode()``. Grad-CAM adds hooks to the model it explains, so it
runs on the session's own copy (:func:`session_model`): on the shared model, another session's
forward pass would fire this session's hooks.

Errors: every expected failure (no model, no data, a bad, corrupt or too large upload) is a
friendly message; anything unexpected is logged with its traceback on the server and shown as one
plain sentence in the browser.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import nn

from course_utils.baseline import BASELINE
from course_utils.data import CLASSES, MEAN, STD, DataUnavailableError, load_tensors
from course_utils.train import CheckpointError, checkpoint_path, load_checkpoint
from serving.serve import DEFAULT_MAX_BYTES, DEFAULT_MEMORY_BUDGET
from serving.upload import (
    ImageTooLarge,
    InvalidImage,
    MemoryBudget,
    PreprocessError,
    ServerBusy,
    UnsupportedImage,
    encode_png,
    preprocess_array,
)

try:  # chapter 10's Grad-CAM; the app works without it
    from course_utils.cam import GradCAM, normalize_cams, overlay
except ImportError:  # pragma: no cover - only on a checkout without chapter 10
    GradCAM = None

INVERT = {"auto (by the border)": None, "yes": True, "no": False}
MAX_MB = DEFAULT_MAX_BYTES // 2**20  # the API's limit; .streamlit/config.toml says the same
LOG = logging.getLogger("streamlit_app")

UNEXPECTED = (
    "Something went wrong on the server while handling this request. The details went to the "
    "server's log; try another image or reload the page, and tell whoever runs this app if it "
    "happens again."
)


def find_model() -> Path | None:
    """``$COURSE_MODEL_PATH``, else the first chapter-1 checkpoint that exists."""
    if env := os.environ.get("COURSE_MODEL_PATH"):
        return Path(env)
    candidates = [checkpoint_path(BASELINE), checkpoint_path(BASELINE, quick=True)]
    return next((p for p in candidates if p.exists()), None)


@st.cache_resource
def load_model(path: str) -> nn.Module:
    """Loaded once per server process and shared by every session (``st.cache_resource``):
    read-only, never hooked (see :func:`session_model`)."""
    model, _ = load_checkpoint(path)
    return model.eval()


def session_model(state: MutableMapping[str, Any], shared: nn.Module, key: str) -> nn.Module:
    """This session's own copy of ``shared`` for Grad-CAM, made once and kept in ``state``
    (the session's ``st.session_state``) under ``key`` (the model's path).

    Grad-CAM registers hooks on the model it explains; on the shared model, a forward pass of
    another session, on another thread, would fire them (and record that session's activations
    as this one's). On a private copy, nothing another session runs can reach them.
    """
    name = f"grad-cam model: {key}"
    if name not in state:
        state[name] = copy.deepcopy(shared)
    return state[name]


@st.cache_resource
def decode_budget() -> MemoryBudget:
    """The memory all sessions' decodes may hold together, as the API's (shared, thread-safe):
    eight tabs uploading huge images take turns instead of multiplying the memory by eight."""
    return MemoryBudget(DEFAULT_MEMORY_BUDGET)


@st.cache_resource
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 test images and labels (uint8, 28×28)."""
    test = load_tensors()["test"]
    return test.images, test.labels


def probabilities(model: nn.Module, x: torch.Tensor) -> pd.DataFrame:
    """The softmax of the model's logits for one input ``[1, 1, 28, 28]``, one row per class,
    most likely first (inference mode: no autograd state, nothing written to the model)."""
    with torch.inference_mode():
        probs = torch.softmax(model(x), dim=1)[0]
    frame = pd.DataFrame({"probability": probs.tolist()}, index=pd.Index(CLASSES, name="class"))
    return frame.sort_values("probability", ascending=False)


def enlarge(pixels: np.ndarray, scale: int = 8) -> np.ndarray:
    """Repeat each pixel ``scale``× along height and width (sharp pixels, no browser blur)."""
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1)


def as_pixels(x: torch.Tensor) -> np.ndarray:
    """The model's normalised input back to uint8 pixels."""
    return (x[0, 0] * STD + MEAN).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def gradcam_overlay(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Chapter 10's Grad-CAM of the predicted class on the last conv block, over the input.

    ``model`` gets hooks for the duration: pass the session's copy, never the shared model."""
    with GradCAM(model, "act2") as cam:
        maps, _ = cam(x)
    rgb = overlay(x[0], normalize_cams(maps)[0], alpha=0.45)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def upload_problem(err: PreprocessError) -> str:
    """One friendly sentence per kind of bad upload, with what to do about it."""
    if isinstance(err, UnsupportedImage):
        return f"This file is not a PNG or JPEG image ({err}). Upload a .png or .jpg photo."
    if isinstance(err, ImageTooLarge):
        return f"This image is too large to decode ({err}). Upload a smaller one."
    if isinstance(err, ServerBusy):
        return f"The server is busy with other uploads ({err}). Try again in a minute."
    if isinstance(err, InvalidImage):
        return f"This file is corrupt or truncated ({err}). Save or export it again."
    return f"This file cannot be classified: {err}"


def read_upload() -> tuple[bytes, bool | None] | None:
    """The uploaded bytes and the inversion choice, or ``None`` after telling the user why not."""
    upload = st.file_uploader(
        f"A PNG or JPEG (at most {MAX_MB} MB)",
        type=["png", "jpg", "jpeg"],
        max_upload_size=MAX_MB,  # the browser refuses larger files, wherever the app starts
    )
    invert = INVERT[st.selectbox("Invert to light-on-dark", list(INVERT))]
    if upload is None:
        st.info("Upload a photo of a garment, ideally on a plain background.")
        return None
    if upload.size > DEFAULT_MAX_BYTES:
        st.error(
            f"The file has {upload.size:,} bytes; the limit is {MAX_MB} MB "
            f"({DEFAULT_MAX_BYTES:,} bytes). Upload a smaller image."
        )
        return None
    return upload.getvalue(), invert


def main() -> None:
    """The page: choose an image, show what the model sees, its prediction and Grad-CAM."""
    path = find_model()
    if path is None:
        st.error(
            "No model found: run chapter 1 (notebooks/01_baseline_cnn.ipynb) to train it, or "
            "set COURSE_MODEL_PATH to a checkpoint saved with course_utils.train.save_checkpoint."
        )
        return
    try:
        model = load_model(str(path))
    except CheckpointError as err:
        st.error(f"The model could not be loaded: {err}")
        return
    st.caption(
        f"Model: `{path.name}`. Images are converted like the API does: greyscale, "
        "light-on-dark, letterboxed to 28×28."
    )

    source = st.radio("Image", ["A test image", "Upload your own"], horizontal=True)
    true_label: int | None = None
    if source == "A test image":
        try:
            images, labels = test_images()
        except DataUnavailableError as err:
            st.error(f"The test images are not available ({err}). Upload an image instead.")
            return
        index = int(st.number_input("Test image index", 0, len(images) - 1, value=0, step=1))
        data, true_label, invert = encode_png(images[index]), int(labels[index]), None
    else:
        upload = read_upload()
        if upload is None:
            return
        data, invert = upload

    try:
        x = torch.from_numpy(preprocess_array(data, invert=invert, budget=decode_budget()))
    except PreprocessError as err:
        st.error(upload_problem(err))
        return

    probs = probabilities(model, x)
    best, best_p = probs.index[0], float(probs.probability.iloc[0])
    left, middle, right = st.columns([1, 1, 1])
    with left:
        st.image(enlarge(as_pixels(x)), caption="What the model sees (28×28)")
    with middle:
        if GradCAM is not None:
            own = session_model(st.session_state, model, str(path))
            st.image(enlarge(gradcam_overlay(own, x)), caption="Where it looked (Grad-CAM)")
    with right:
        st.metric("Prediction", best, f"{best_p:.1%} probability", delta_color="off")
        if true_label is not None:
            verdict = "✅ correct" if CLASSES[true_label] == best else "❌ wrong"
            st.write(f"True class: **{CLASSES[true_label]}** ({verdict})")

    st.subheader("Probability per class")
    chart = probs.reindex(list(CLASSES))
    st.bar_chart(chart, horizontal=True, x_label="probability", y_label="class")


if __name__ == "__main__":  # `streamlit run` and AppTest run the file as __main__
    st.set_page_config(page_title="Fashion-MNIST classifier", page_icon="👕")
    st.title("👕 Fashion-MNIST classifier")
    try:
        main()
    except Exception:  # noqa: BLE001 - the browser gets a sentence, the log the traceback
        LOG.exception("unexpected error in the Streamlit app")
        st.error(UNEXPECTED)
