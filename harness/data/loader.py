"""Batches from the decoded-image cache: random crop, flip and normalisation, on the GPU when there is one."""
from __future__ import annotations

import concurrent.futures as futures
import logging
from typing import Iterator

import numpy as np
import torch

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIDENT_SHARE = 0.25  # keep the whole cache on the GPU when it takes at most this share of free memory
_UPLOAD_BYTES = 64 << 20  # upload a resident cache in pieces, so the host never holds a second full copy


def load_size(image_size: int) -> int:
    """Cache resolution for a crop of image_size: the 256 -> 224 convention (8/7)."""
    return round(image_size * 8 / 7)


class Batches:
    """Epochs of (x, y) batches over a uint8 image array and its labels.

    x is float32 (B, 3, crop, crop), ImageNet-normalised, grayscale repeated over 3 channels;
    y is float32 (B, 14). Training shuffles and, with augment, takes a random crop and a random
    horizontal flip per sample; evaluation takes the center crop in the array's order. All random
    draws come from a generator seeded by (seed, epoch): call set_epoch(epoch) before each epoch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, crop: int, train: bool,
                 augment: bool = True, device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 resident: bool | None = None, channels_last: bool | None = None) -> None:
        if images.ndim != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
            raise ValueError(f"images must be a uint8 (n, size, size) array, got {images.dtype} {images.shape}")
        if labels.ndim != 2 or len(labels) != len(images):
            raise ValueError(f"labels must be (n, findings) with n = {len(images)} images, got {labels.shape}")
        if not 1 <= crop <= images.shape[1]:
            raise ValueError(f"crop {crop} does not fit the cached {images.shape[1]}px images; "
                             f"build the cache at load_size({crop}) = {load_size(crop)}")
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

    def _plan(self) -> tuple[list[np.ndarray], torch.Tensor | None]:
        """This epoch's batches of (sorted) indices and the per-position (row, col, flip) draws."""
        n, g = len(self.images), self._generator()
        order = torch.randperm(n, generator=g).numpy() if self.train else np.arange(n)
        stop = len(self) * self.batch_size if self.drop_last else n
        # Sorted indices read the memory map front to back; order within a batch does not matter.
        batches = [np.sort(order[s:s + self.batch_size]) if self.train else order[s:s + self.batch_size]
                   for s in range(0, stop, self.batch_size)]
        draws = None
        if self.augment:
            room = self.images.shape[1] - self.crop + 1
            draws = torch.stack([torch.randint(0, room, (n,), generator=g), torch.randint(0, room, (n,), generator=g),
                                 (torch.rand(n, generator=g) < 0.5).long()]).to(self.device)
        return batches, draws

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches, draws = self._plan()
        position = 0
        if self.resident and batches:
            images, labels = self._upload()
            order = torch.from_numpy(np.concatenate(batches)).to(self.device)  # one copy per epoch
            for idx in batches:
                index = order[position:position + len(idx)]
                yield self._transform(images, index, draws, position), labels[index]
                position += len(idx)
            return
        for x, y in self._prefetched(batches):
            x = x.to(self.device, non_blocking=True)
            yield self._transform(x, None, draws, position), y.to(self.device, non_blocking=True)
            position += len(x)

    def _prefetched(self, batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Host batches read from the memory map one ahead, in a thread, so the disk overlaps compute."""
        def read(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
            y = torch.from_numpy(np.asarray(self.labels[idx], dtype=np.float32))
            return (x.pin_memory(), y.pin_memory()) if self._pin else (x, y)

        if not batches:
            return
        with futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(read, batches[0])
            for following in [*batches[1:], None]:
                ready = pending.result()
                if following is not None:
                    pending = pool.submit(read, following)
                yield ready

    def _upload(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._resident is None:
            n, size = self.images.shape[:2]
            images = torch.empty((n, size, size), dtype=torch.uint8, device=self.device)
            step = max(1, _UPLOAD_BYTES // (size * size))
            for s in range(0, n, step):
                images[s:s + step].copy_(torch.from_numpy(np.array(self.images[s:s + step])))  # writable copy
            labels = torch.from_numpy(np.asarray(self.labels, dtype=np.float32)).to(self.device)
            self._resident = (images, labels)
            log.info("%d images (%.0f MB) resident on %s", n, self.images.nbytes / 2**20, self.device)
        return self._resident

    def _transform(self, source: torch.Tensor, index: torch.Tensor | None, draws: torch.Tensor | None,
                   position: int) -> torch.Tensor:
        """Crop (and flip) source[index] (or all of source) on its device, then normalise to float32."""
        count = len(source) if index is None else len(index)
        if draws is None:
            start = (source.shape[1] - self.crop) // 2
            window = slice(start, start + self.crop)
            crops = source[:, window, window] if index is None else source[index, window, window]
        else:
            rows, cols, flip = draws[:, position:position + count]
            steps = torch.arange(self.crop, device=source.device)
            # One gather with per-sample offsets; the flip reverses the column index instead of the image.
            row_index = rows[:, None] + steps
            col_index = cols[:, None] + torch.where(flip[:, None].bool(), self.crop - 1 - steps, steps)
            which = (torch.arange(count, device=source.device) if index is None else index)[:, None, None]
            crops = source[which, row_index[:, :, None], col_index[:, None, :]]
        pixels = crops.float()
        if self.channels_last:
            # (B, H, W, 3) permuted to (B, 3, H, W) is exactly the channels_last layout.
            return torch.addcmul(self._shift, pixels.unsqueeze(-1), self._scale).permute(0, 3, 1, 2)
        return torch.addcmul(self._shift.view(1, 3, 1, 1), pixels.unsqueeze(1), self._scale.view(1, 3, 1, 1))
