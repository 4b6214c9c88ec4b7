"""What tests at every layer share: the hand-written NIH tree, the environment of a `harness` process, running one."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent

# Kaggle's Data_Entry_2017.csv: the header ends with a comma (pandas sees a 12th, unnamed column).
ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
# name, findings, follow-up, patient, age, sex, view. Patients 1-7 are train_val, 8-10 test.
ENTRIES = """\
00000001_000.png,Cardiomegaly,0,1,58,M,PA
00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA
00000001_002.png,Cardiomegaly|Effusion,2,1,58,M,PA
00000002_000.png,No Finding,0,2,81,M,PA
00000002_001.png,No Finding,1,2,81,M,PA
00000002_002.png,Atelectasis,2,2,81,M,AP
00000002_003.png,Atelectasis|Infiltration,3,2,81,M,AP
00000003_000.png,Hernia,0,3,74,F,PA
00000003_001.png,Hernia|Mass,1,3,74,F,PA
00000003_002.png,No Finding,2,3,75,F,PA
00000004_000.png,Nodule,0,4,39,F,PA
00000004_001.png,Mass|Nodule,1,4,39,F,PA
00000004_002.png,Pneumothorax,2,4,40,F,AP
00000004_003.png,No Finding,3,4,40,F,PA
00000005_000.png,Infiltration|Pneumonia,0,5,61,M,AP
00000005_001.png,Consolidation,1,5,61,M,AP
00000005_002.png,Edema,2,5,62,M,AP
00000006_000.png,Fibrosis,0,6,55,F,PA
00000006_001.png,Pleural_Thickening,1,6,55,F,PA
00000006_002.png,No Finding,2,6,56,F,PA
00000006_003.png,No Finding,3,6,56,F,PA
00000007_000.png,Effusion|Infiltration,0,7,33,M,PA
00000007_001.png,No Finding,1,7,33,M,PA
00000007_002.png,Atelectasis,2,7,34,M,AP
00000008_000.png,Effusion,0,8,47,F,PA
00000008_001.png,Mass|Nodule,1,8,47,F,PA
00000008_002.png,No Finding,2,8,48,F,PA
00000008_003.png,Cardiomegaly,3,8,48,F,AP
00000009_000.png,Infiltration,0,9,29,M,PA
00000009_001.png,Effusion|Pneumothorax,1,9,29,M,AP
00000009_002.png,No Finding,2,9,30,M,PA
00000009_003.png,Emphysema,3,9,30,M,PA
00000010_000.png,Atelectasis|Consolidation,0,10,66,F,AP
00000010_001.png,Edema|Effusion,1,10,66,F,AP
00000010_002.png,Hernia,2,10,67,F,PA
00000010_003.png,No Finding,3,10,67,F,PA
"""
NOT_ON_DISK = "00000010_003.png"  # listed in Data_Entry, never written: must be reported as missing
NOT_LISTED = "00000099_000.png"  # on disk, not in Data_Entry: ignored
# Kaggle's box list: the header splits "Bbox [x,y,w,h]" over four columns and adds three empty ones;
# "Infiltrate" is its spelling of Infiltration.
BOXES = """\
Image Index,Finding Label,Bbox [x,y,w,h],,,
00000001_000.png,Cardiomegaly,312.5,400.25,420,300.75,,,
00000002_003.png,Infiltrate,100,200,256,128,,,
00000008_001.png,Mass,600,512,64,80,,,
00000008_001.png,Nodule,128,700,32.5,30,,,
"""
TRAIN_VAL_PATIENTS = range(1, 8)


def pixels(name: str, px: int) -> np.ndarray:
    """A deterministic grayscale image per name: a gradient, a name-dependent disc and mild noise."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    y, x = np.mgrid[0:px, 0:px] / px
    cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.25)
    image = 60 + 120 * y + 60 * ((y - cy) ** 2 + (x - cx) ** 2 < r * r) + rng.normal(0, 6, (px, px))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_nih_tree(root: Path, *, image_px: int = 64, repeat: int = 1) -> Path:
    """Write the hand-written tree under root; repeat > 1 adds copies with new patient ids (for benchmarks)."""
    root.mkdir(parents=True, exist_ok=True)
    lines, train_val, test = [ENTRY_HEADER], [], []
    for copy in range(repeat):
        for line in ENTRIES.splitlines():
            name, findings, follow_up, patient, *rest = line.split(",")
            pid = int(patient) + 1000 * copy
            name = f"{pid:08d}_{name[9:]}"
            lines.append(",".join([name, findings, follow_up, str(pid), *rest, "1024", "1024", "0.143", "0.143"]))
            (train_val if int(patient) in TRAIN_VAL_PATIENTS else test).append(name)
            if copy == 0 and name == NOT_ON_DISK:
                continue
            folder = root / ("images_001" if int(patient) <= 5 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(name, image_px)).save(folder / name)
    Image.fromarray(pixels(NOT_LISTED, image_px)).save(root / "images_002" / "images" / NOT_LISTED)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    (root / "BBox_List_2017.csv").write_text(BOXES)
    return root


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `harness` process under test: this one's, less what would point it elsewhere, with a
    private cache and TORCH_HOME under home (so no ImageNet file is found unless a test places one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HARNESS_DATA_ROOT", "RAY_ADDRESS", "WANDB_API_KEY")}
    env.update(
        HARNESS_CACHE_DIR=str(home / "cache"),
        TORCH_HOME=str(home / "torch"),
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    return {**env, **extra}


def harness_cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "harness", *map(str, args)]


def run_harness(*args: object, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` from the repository, its output captured."""
    return subprocess.run(harness_cmd(*args), capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def write_grid(folder: Path, name: str, body: str) -> Path:
    """A grid file folder/NAME.yaml whose name is NAME and whose lines are body (dedented)."""
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(body).strip() + "\n")
    return path


def thread_step_faults(steps: int) -> list[int]:
    """Minor page faults of each AlexNet training step in a fresh thread (as Tune runs a trial), with the allocator
    set up as run_trial sets it. Run it in a fresh process or a Ray worker: a long test session's heap says nothing."""
    import resource
    import threading

    import torch
    import torchvision

    from harness import hardware

    hardware.keep_freed_memory()
    faults: list[int] = []

    def work() -> None:
        torch.manual_seed(0)
        model = torchvision.models.alexnet(num_classes=14)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        x, y = torch.randn(4, 3, 64, 64), torch.rand(4, 14)
        for _ in range(steps):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            optimizer.zero_grad(set_to_none=True)  # as train_step: each step allocates its gradients anew
            torch.nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            optimizer.step()
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return faults


def fresh_thread_step_faults(steps: int, **env: str) -> list[int]:
    """thread_step_faults in a fresh process whose environment is this one's less MALLOC_ARENA_MAX, plus env."""
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    code = f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import support; "
    code += f"print(json.dumps(support.thread_step_faults({steps})))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# MLflow and W&B are optional extras: a grid run under test logs to them too where they are installed.
TRACKED = [t for t in ("mlflow", "wandb") if importlib.util.find_spec(t)]


# --- TensorBoard's event files, read back -------------------------------------------------------------------


def read_events(folder: Path) -> list:
    """Every event in a run folder's event files, each record's CRCs checked (TFRecord framing)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            header = data[i : i + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[i + 8 : i + 12])[0] == masked_crc32c(header)
            body = data[i + 12 : i + 12 + length]
            assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == masked_crc32c(body)
            events.append(Event.FromString(body))
            i += 16 + length
    return events


def scalars(events: list) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, {})[e.step] = v.simple_value
    return out


def hparams(events: list) -> dict[str, object]:
    """The hyperparameters of the run's hparams session start."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    for e in events:
        for v in e.summary.value:
            if v.tag == "_hparams_/session_start_info":
                info = HParamsPluginData.FromString(v.metadata.plugin_data.content).session_start_info
                return {k: getattr(p, p.WhichOneof("kind")) for k, p in info.hparams.items()}
    return {}


def alexnet_state(seed: int = 0):
    """A seeded torchvision AlexNet state dict with ImageNet's 1,000-class head: a starting-weights file's content."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.alexnet(num_classes=1000).state_dict()


def saved(path, obj) -> str:
    """obj written with torch.save at path; returns the path as a string."""
    import torch

    torch.save(obj, path)
    return str(path)
