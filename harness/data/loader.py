"""Batches from the decoded-image cache: random crop, flip and normalisation, on the GPU when there is one."""

from __future__ import annotations

import collections
import concurrent.futures as futures
import logging
from collections.abc import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIDENT_SHARE = 0.25  # keep the whole cache on the GPU when it takes at most this share of free memory
PREFETCH = 2  # host batches prepared ahead of the one in use
_UPLOAD_BYTES = 64 << 20  # upload a resident cache in pieces, so the host never holds a second full copy


def load_size(image_size: int) -> int:
    """Cache resolution for a crop of image_size: the 256 -> 224 convention (8/7)."""
    return round(image_size * 8 / 7)


def eval_load_size(crop: int, eval_resize: str = "crop") -> int:
    """The side evaluation films are decoded at: load_size(crop), whose centre crop the model sees (the crop
    training saw); or, with eval_resize "whole", crop itself, so the model sees the whole film resized."""
    return crop if eval_resize == "whole" else load_size(crop)


def centre_window(load: int, crop: int) -> slice:
    """The rows (or columns) of a load-px side that the evaluation's centre crop of crop px keeps."""
    start = (load - crop) // 2  # an odd margin leaves its extra pixel at the far side
    return slice(start, start + crop)


class Batches:
    """Epochs of (x, y) batches over a uint8 image array and its labels.

    x is float32 (B, 3, crop, crop), ImageNet-normalised, grayscale repeated over 3 channels;
    y is float32 (B, 14). Training shuffles and, with augment, takes a random crop and a random
    horizontal flip per sample; evaluation takes the center crop in the array's order. All random
    draws come from a generator seeded by (seed, epoch): call set_epoch(epoch) before each epoch.

    Two paths, same batches. Resident (the whole array in GPU memory): crop, flip and normalise are
    one gather and one multiply-add on the GPU. Streamed (the CPU, or a cache too big for the GPU):
    threads cut each batch's uint8 crops straight out of the memory map, PREFETCH batches ahead, so
    only the crop's bytes are read and moved; the float conversion runs on the device that trains
    (on the CPU it runs in those threads too, overlapping the model's step).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        crop: int,
        train: bool,
        augment: bool = True,
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        resident: bool | None = None,
        channels_last: bool | None = None,
    ) -> None:
        if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 (n, size, size) array, got {images.dtype} {images.shape}")
        if labels.ndim != 2 or len(labels) != len(images):
            raise ValueError(f"labels must be (n, findings) with n = {len(images)} images, got {labels.shape}")
        if not 1 <= crop <= images.shape[1]:
            raise ValueError(
                f"crop {crop} does not fit the cached {images.shape[1]}px images; "
                f"build the cache at load_size({crop}) = {load_size(crop)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.crop, self.train = batch_size, crop, train
        self.augment = augment and train
        self.device = torch.device(device)
        self.seed, self.epoch, self.drop_last = seed, 0, drop_last
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if channels_last is None else channels_last
        self._resident_choice = resident
        self._resident: tuple[torch.Tensor, torch.Tensor] | None = None
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
        # x * scale + shift == (x / 255 - mean) / std, in one fused multiply-add per element.
        self._scale = (1.0 / (255.0 * std)).to(self.device)
        self._shift = (-torch.tensor(IMAGENET_MEAN, dtype=torch.float32) / std).to(self.device)
        self._pin = cuda

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Reseed shuffle and augmentation for this epoch, so a run is repeatable and resumable."""
        self.epoch = epoch

    @property
    def resident(self) -> bool:
        """Whether the whole array lives on the device (decided on first use when not given)."""
        if self._resident_choice is None:
            self._resident_choice = self._fits_on_device()
        return self._resident_choice

    def _fits_on_device(self) -> bool:
        if self.device.type != "cuda":
            return False  # on the CPU the memory map and the page cache already are the resident copy
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.images.nbytes <= RESIDENT_SHARE * free

    def _generator(self) -> torch.Generator:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def _plan(self) -> tuple[list[np.ndarray], np.ndarray | None]:
        """This epoch's batches of (sorted) indices and the per-position (row, col, flip) draws, (3, n)."""
        n, g = len(self.images), self._generator()
        order = torch.randperm(n, generator=g).numpy() if self.train else np.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        # Sorted indices read the memory map front to back; order within a batch does not matter.
        batches = [
            np.sort(order[s : s + self.batch_size]) if self.train else order[s : s + self.batch_size]
            for s in range(0, stop, self.batch_size)
        ]
        draws = None
        if self.augment:
            room = self.images.shape[1] - self.crop + 1
            draws = torch.stack(
                [
                    torch.randint(0, room, (n,), generator=g),
                    torch.randint(0, room, (n,), generator=g),
                    (torch.rand(n, generator=g) < 0.5).long(),
                ]
            ).numpy()
        return batches, draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, draws = self._plan()
        if not batches:
            return
        if self.resident:
            yield from self._resident_batches(batches, draws)
            return
        on_host = self.device.type == "cpu"
        for crops, y in self._prefetched(batches, draws, normalise=on_host):
            if on_host:
                yield crops, y
            else:
                yield self._normalise(crops.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)

    # --- resident: the whole array on the device -------------------------------------------------

    def _resident_batches(
        self, batches: list[np.ndarray], draws: np.ndarray | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self._upload()
        order = torch.from_numpy(np.concatenate(batches)).to(self.device)  # one copy per epoch
        on_device = None if draws is None else torch.from_numpy(draws).to(self.device)
        position = 0
        for idx in batches:
            index = order[position : position + len(idx)]
            yield self._normalise(self._gather(images, index, on_device, position)), labels[index]
            position += len(idx)

    def _upload(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._resident is None:
            n, size = self.images.shape[:2]
            images = torch.empty((n, size, size), dtype=torch.uint8, device=self.device)
            step = max(1, _UPLOAD_BYTES // (size * size))
            for s in range(0, n, step):
                images[s : s + step].copy_(torch.from_numpy(np.array(self.images[s : s + step])))  # writable copy
            labels = torch.from_numpy(np.asarray(self.labels, dtype=np.float32)).to(self.device)
            self._resident = (images, labels)
            log.info("%d images (%.0f MB) resident on %s", n, self.images.nbytes / 2**20, self.device)
        return self._resident

    def _gather(
        self, source: torch.Tensor, index: torch.Tensor, draws: torch.Tensor | None, position: int
    ) -> torch.Tensor:
        """uint8 crops (and flips) of source[index], on source's device."""
        if draws is None:
            window = centre_window(source.shape[1], self.crop)
            return source[index, window, window]
        rows, cols, flip = draws[:, position : position + len(index)]
        steps = torch.arange(self.crop, device=source.device)
        # One gather with per-sample offsets; the flip reverses the column index instead of the image.
        row_index = rows[:, None] + steps
        col_index = cols[:, None] + torch.where(flip[:, None].bool(), self.crop - 1 - steps, steps)
        return source[index[:, None, None], row_index[:, :, None], col_index[:, None, :]]

    # --- streamed: crops cut on the host, ahead of use -------------------------------------------

    def _prefetched(
        self, batches: list[np.ndarray], draws: np.ndarray | None, *, normalise: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) host batches prepared PREFETCH ahead in threads, in order, so the disk and the cutting
        overlap the model (numpy's copies and torch's kernels release the GIL)."""
        starts = np.cumsum([0] + [len(b) for b in batches[:-1]])

        def prepare(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            idx = batches[k]
            x = torch.from_numpy(self._cut(idx, None if draws is None else draws[:, starts[k] : starts[k] + len(idx)]))
            y = torch.from_numpy(np.asarray(self.labels[idx], dtype=np.float32))
            if normalise:
                return self._normalise(x), y
            return (x.pin_memory(), y.pin_memory()) if self._pin else (x, y)

        with futures.ThreadPoolExecutor(PREFETCH) as pool:
            pending = collections.deque(pool.submit(prepare, k) for k in range(min(PREFETCH, len(batches))))
            for k in range(len(batches)):
                ready = pending.popleft().result()
                if k + PREFETCH < len(batches):
                    pending.append(pool.submit(prepare, k + PREFETCH))
                yield ready

    def _cut(self, idx: np.ndarray, draws: np.ndarray | None) -> np.ndarray:
        """The uint8 (B, crop, crop) crops of images[idx], read straight from the memory map."""
        c = self.crop
        if draws is None:
            window = centre_window(self.images.shape[1], c)
            return np.ascontiguousarray(self.images[idx, window, window])
        out = np.empty((len(idx), c, c), dtype=np.uint8)
        for k, (i, r, col, flip) in enumerate(zip(idx, *draws)):
            window = self.images[i, r : r + c, col : col + c]
            out[k] = window[:, ::-1] if flip else window
        return out

    def _normalise(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W) -> ImageNet-normalised float32 (B, 3, H, W), on crops' device."""
        pixels = crops.float()
        if self.channels_last:
            # (B, H, W, 3) permuted to (B, 3, H, W) is exactly the channels_last layout.
            return torch.addcmul(self._shift, pixels.unsqueeze(-1), self._scale).permute(0, 3, 1, 2)
        return torch.addcmul(self._shift.view(1, 3, 1, 1), pixels.unsqueeze(1), self._scale.view(1, 3, 1, 1))
