"""A web app for the chapter-1 model: pick a test image or upload a photo, see the prediction.

Run it from the repository root:

    streamlit run apps/streamlit_app.py --server.fileWatcherType none

(the file watcher, which reruns the page when a source file changes, inspects every imported
module on every rerun; older Streamlit releases trip over ``torch.classes`` there, and a deployed
app does not need it; chapter 9 explains.) The model is ``$COURSE_MODEL_PATH`` if set, otherwise the
chapter-1 checkpoint (full, else quick). Uploads go through exactly the preprocessing of the
Flask API (:func:`course_utils.serve.preprocess_image`); the Grad-CAM overlay is chapter 10's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from course_utils.baseline import BASELINE
from course_utils.data import CLASSES, MEAN, STD, DataUnavailableError, load_tensors
from course_utils.serve import (
    DEFAULT_MAX_BYTES,
    PreprocessError,
    encode_png,
    predict_response,
    preprocess_image,
)
from course_utils.train import CheckpointError, checkpoint_path, load_checkpoint

try:  # chapter 10's Grad-CAM; the app works without it
    from course_utils.cam import GradCAM, normalize_cams, overlay
except ImportError:  # pragma: no cover - only on a checkout without chapter 10
    GradCAM = None

INVERT = {"auto (by the border)": None, "yes": True, "no": False}


def find_model() -> Path | None:
    """``$COURSE_MODEL_PATH``, else the first chapter-1 checkpoint that exists."""
    if env := os.environ.get("COURSE_MODEL_PATH"):
        return Path(env)
    candidates = [checkpoint_path(BASELINE), checkpoint_path(BASELINE, quick=True)]
    return next((p for p in candidates if p.exists()), None)


@st.cache_resource
def load_model(path: str) -> torch.nn.Module:
    """Loaded once per server process and shared by every session (``st.cache_resource``)."""
    model, _ = load_checkpoint(path)
    return model.eval()


@st.cache_resource
def test_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 test images and labels (uint8, 28×28)."""
    test = load_tensors()["test"]
    return test.images, test.labels


def enlarge(pixels: np.ndarray, scale: int = 8) -> np.ndarray:
    """Repeat each pixel ``scale``× along height and width (sharp pixels, no browser blur)."""
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1)


def as_pixels(x: torch.Tensor) -> np.ndarray:
    """The model's normalised input back to uint8 pixels."""
    return (x[0, 0] * STD + MEAN).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def gradcam_overlay(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Chapter 10's Grad-CAM of the predicted class on the last conv block, over the input."""
    with GradCAM(model, "act2") as cam:
        maps, _ = cam(x)
    rgb = overlay(x[0], normalize_cams(maps)[0], alpha=0.45)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


st.set_page_config(page_title="Fashion-MNIST classifier", page_icon="👕")
st.title("👕 Fashion-MNIST classifier")

path = find_model()
if path is None:
    st.error(
        "No model found: run chapter 1 (notebooks/01_baseline_cnn.ipynb) to train it, or set "
        "COURSE_MODEL_PATH to a checkpoint saved with course_utils.train.save_checkpoint."
    )
    st.stop()
try:
    model = load_model(str(path))
except CheckpointError as err:
    st.error(f"The model could not be loaded: {err}")
    st.stop()
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
        st.stop()
    index = int(st.number_input("Test image index", 0, len(images) - 1, value=0, step=1))
    data, true_label, invert = encode_png(images[index]), int(labels[index]), None
else:
    upload = st.file_uploader(
        f"A PNG or JPEG (at most {DEFAULT_MAX_BYTES // 2**20} MB)", type=["png", "jpg", "jpeg"]
    )
    invert = INVERT[st.selectbox("Invert to light-on-dark", list(INVERT))]
    if upload is None:
        st.info("Upload a photo of a garment, ideally on a plain background.")
        st.stop()
    data = upload.getvalue()
    if len(data) > DEFAULT_MAX_BYTES:
        st.error(f"The file has {len(data):,} bytes; the limit is {DEFAULT_MAX_BYTES:,}.")
        st.stop()

try:
    x = preprocess_image(data, invert=invert)
except PreprocessError as err:
    st.error(f"This file cannot be classified: {err}")
    st.stop()

result = predict_response(model, x, top_k=len(CLASSES))
best = result["probabilities"][0]
left, middle, right = st.columns([1, 1, 1])
with left:
    st.image(enlarge(as_pixels(x)), caption="What the model sees (28×28)")
with middle:
    if GradCAM is not None:
        st.image(enlarge(gradcam_overlay(model, x)), caption="Where it looked (Grad-CAM)")
with right:
    st.metric(
        "Prediction", best["label"], f"{best['probability']:.1%} probability", delta_color="off"
    )
    if true_label is not None:
        verdict = "✅ correct" if true_label == best["class_index"] else "❌ wrong"
        st.write(f"True class: **{CLASSES[true_label]}** ({verdict})")

chart = pd.DataFrame(
    {"probability": [p["probability"] for p in result["probabilities"]]},
    index=pd.Index([p["label"] for p in result["probabilities"]], name="class"),
).reindex(list(CLASSES))
st.subheader("Probability per class")
st.bar_chart(chart, horizontal=True, x_label="probability", y_label="class")
