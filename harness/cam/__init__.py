"""Grad-CAM and layer activations, pictured and measured against the NIH boxes (pointing, energy, IoU).

maps (layers, hooks, the METHODS registry) and boxes (input-pixel geometry) stand alone; scoring uses
both; figures uses boxes; command (`harness cam TRIAL_DIR`) uses them all. Tunable constants (THRESHOLD,
TOLERANCE, SMOOTH_SAMPLES, ...) live in, and are read from, the module that uses them.
"""

from harness.cam.boxes import box_mask, input_box, input_crop, tolerance_px
from harness.cam.command import load_model, run_cam
from harness.cam.maps import (
    METHODS,
    activations,
    cam,
    cam_and_logits,
    default_layer,
    figure_layers,
    finding_index,
    resolve_layer,
)
from harness.cam.overlays import activation_figure, grid_figure, overlay_figure
from harness.cam.scoring import METRICS, RULES, eval_batches, score_map, score_trial, summarise

__all__ = [
    "METHODS",
    "METRICS",
    "RULES",
    "activation_figure",
    "activations",
    "box_mask",
    "cam",
    "cam_and_logits",
    "default_layer",
    "eval_batches",
    "figure_layers",
    "finding_index",
    "grid_figure",
    "input_box",
    "input_crop",
    "load_model",
    "overlay_figure",
    "resolve_layer",
    "run_cam",
    "score_map",
    "score_trial",
    "summarise",
    "tolerance_px",
]
