"""`clip`: open_clip image embeddings, with weights found locally and never fetched by surprise.

Weights come from one of three places, checked in this order:
1. a local checkpoint file (`clip.checkpoint`);
2. the Hugging Face cache (where `homog models pull` and open_clip itself put them), or open_clip's
   own URL cache (~/.cache/clip) for the few tags that are not on the Hub;
3. nowhere else during a run: runs never download. `homog models pull` (on a connected machine)
   is the one command that fetches weights, into the Hugging Face cache.

Decoding and preprocessing of the next batches run in background threads while the model runs, so
the model does not wait on JPEG decoding; on CPUs with bf16 support the model runs in bfloat16 (cosine to fp32 ~0.9999
with real weights), on CUDA in fp16.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).with_name("model_configs")
TINY_TEST_MODEL = "homog-tiny-test"  # seeded random weights; for tests only, never a default
_HF_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class WeightsNotFound(RuntimeError):
    """CLIP weights are not on this machine (and could not be fetched)."""


class UnknownModel(ValueError):
    """The configured open_clip model name does not exist."""


def _open_clip() -> Any:
    import open_clip

    if TINY_TEST_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def weights_help(model: str, pretrained: str) -> str:
    return (
        f"CLIP weights for {model} / {pretrained} were not found on this machine. Provide them one of three ways:\n"
        f"  1. pretrained tag: run `homog models pull {model} {pretrained}` where the Hugging Face Hub is reachable;\n"
        f"  2. Hugging Face cache: copy a cache that holds them (~/.cache/huggingface) here, or set HF_HOME to it;\n"
        f"  3. local checkpoint file: set `clip.checkpoint` (HOMOG_CLIP__CHECKPOINT) to an open_clip checkpoint.\n"
        f"Or use `--embedder classic`, the offline embedder (see README, 'Embedders')."
    )


def find_local_weights(model: str, pretrained: str, checkpoint: Path | None = None) -> str | None:
    """Path of weights already on this machine, without touching the network; None if absent."""
    if checkpoint is not None:
        return str(checkpoint) if Path(checkpoint).is_file() else None
    if os.path.isfile(pretrained):
        return pretrained
    cfg = _open_clip().get_pretrained_cfg(model, pretrained)
    if not cfg:
        return None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/name/" means the default file names, "org/name/file" one file.
        repo_id, filename = os.path.split(cfg["hf_hub"])
        for name in ([filename] if filename else []) + list(_HF_WEIGHT_FILES):
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if cached.is_file():
            return str(cached)
    return None


def known_pretrained() -> list[tuple[str, str]]:
    """Every (model, tag) pair that open_clip knows how to fetch."""
    return [tuple(pair) for pair in _open_clip().list_pretrained()]  # type: ignore[misc]


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference != "auto":
        return preference
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matrix support (AVX512-BF16 or AMX)."""
    import torch

    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def pick_dtype(device: str, precision: str = "auto") -> torch.dtype:
    import torch

    named = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision != "auto":
        return named[precision]
    if device == "cuda":
        return torch.float16
    if device == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def _yield_cpu_to_model() -> None:
    """Run decode threads at the lowest priority: on a CPU-bound machine they then fill the model's
    idle moments instead of stalling its OpenMP threads at every barrier."""
    import threading

    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not permitted: plain priority is still correct, only slower


def prefetched_batches(
    uris: Sequence[str], load: Callable[[str], torch.Tensor], batch_size: int, threads: int, lookahead: int = 2
) -> Iterator[torch.Tensor]:
    """Yield stacked batches in order while the next `lookahead` batches decode in background threads.

    Threads rather than DataLoader processes: Pillow's decoder/resizer and torch's tensor ops release
    the GIL, and threads hand tensors over without pickling them through shared memory, which on
    small machines cost more than the decoding itself. Memory stays bounded by the lookahead.
    """
    import torch

    starts = list(range(0, len(uris), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="decode", initializer=_yield_cpu_to_model) as pool:
        pending: deque[list[Future]] = deque()

        def submit(start: int) -> None:
            pending.append([pool.submit(load, uri) for uri in uris[start : start + batch_size]])

        for start in starts[: lookahead + 1]:
            submit(start)
        for position in range(len(starts)):
            batch = torch.stack([future.result() for future in pending.popleft()])
            if position + lookahead + 1 < len(starts):
                submit(starts[position + lookahead + 1])
            yield batch


class ClipEmbedder:
    """open_clip image tower; `embed_uris` returns L2-normalised float32 vectors."""

    def __init__(
        self,
        model: str = "ViT-B-32",
        pretrained: str | None = "laion2b_s34b_b79k",
        checkpoint: Path | None = None,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 64,
        decode_threads: int = 1,
        allow_download: bool = False,
        random_init_seed: int | None = None,
    ) -> None:
        open_clip = _open_clip()
        self.model_name = model
        self.batch_size = batch_size
        self.decode_threads = decode_threads
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        if pretrained is None and checkpoint is None:
            if random_init_seed is None:
                raise ValueError("pretrained=None needs random_init_seed: random weights are for tests and benchmarks only")
            weights, tag = None, f"random{random_init_seed}"
        else:
            weights = find_local_weights(model, pretrained or "", checkpoint)
            if weights is None and checkpoint is not None:
                raise WeightsNotFound(f"checkpoint file not found: {checkpoint}\n" + weights_help(model, str(pretrained)))
            if weights is None and not allow_download:
                raise WeightsNotFound(weights_help(model, str(pretrained)))
            tag = f"ckpt{_file_digest(weights)}" if checkpoint is not None else str(pretrained)
            if weights is None:
                weights = pretrained  # let open_clip fetch it into the cache
        config = open_clip.get_model_config(model)
        if config is None:
            raise UnknownModel(
                f"unknown open_clip model {model!r}; `python -c 'import open_clip; print(open_clip.list_models())'` lists them"
            )
        self._weights, self._pretrained, self._random_init_seed = weights, str(pretrained), random_init_seed
        self._model: Any = None
        self._preprocess: Any = None
        self.id = f"clip-{model}-{tag}"
        self.dim = int(config["embed_dim"])
        side = config["vision_cfg"]["image_size"]
        self.input_side = int(side[0] if isinstance(side, (list, tuple)) else side)

    def load(self) -> None:
        """Build the model on first use: a rerun served from the cache never pays for loading weights."""
        if self._model is not None:
            return
        open_clip = _open_clip()
        if self._random_init_seed is not None:
            import torch

            torch.manual_seed(self._random_init_seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.model_name, pretrained=self._weights)
        except RuntimeError as exc:
            if "Unknown model" in str(exc) or "not found" in str(exc).lower() or "download" in str(exc).lower():
                raise WeightsNotFound(f"{exc}\n" + weights_help(self.model_name, self._pretrained)) from None
            raise
        except (FileNotFoundError, OSError) as exc:
            raise WeightsNotFound(f"{exc}\n" + weights_help(self.model_name, self._pretrained)) from None
        self._model = model.to(self.device, dtype=self.dtype).eval()
        self._preprocess = preprocess
        logger.info("clip embedder %s on %s in %s", self.id, self.device, str(self.dtype).removeprefix("torch."))

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    @property
    def preprocess(self) -> Any:
        self.load()
        return self._preprocess

    def encode_batch(self, pixels: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(pixels.to(self.device, dtype=self.dtype)).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text-tower vectors (zero-shot prompts), in the image vectors' space."""
        import torch

        tokens = _open_clip().get_tokenizer(self.model_name)(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        return features.cpu().numpy().astype(np.float32)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, self.dim), np.float32)
        batches = [
            self.encode_batch(torch.stack([self.preprocess(image.convert("RGB")) for image in images[start : start + self.batch_size]]))
            for start in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(batches)

    def load_pixels(self, uri: str) -> torch.Tensor:
        from pipeline.ingest.intake import load_rgb

        return self.preprocess(load_rgb(uri, draft_side=self.input_side))

    def embed_uris(self, uris: Sequence[str], progress: bool = False) -> np.ndarray:
        from tqdm.auto import tqdm

        if not uris:
            return np.zeros((0, self.dim), np.float32)
        vectors = []
        batches = prefetched_batches(uris, self.load_pixels, self.batch_size, threads=self.decode_threads)
        with tqdm(total=len(uris), desc=f"embed {self.model_name}", unit="img", disable=not progress) as bar:
            for pixels in batches:
                vectors.append(self.encode_batch(pixels))
                bar.update(len(pixels))
        return np.concatenate(vectors)


def _file_digest(path: str, edge_bytes: int = 4 << 20) -> str:
    """Identity of a checkpoint: its size plus its first and last 4 MiB.

    Hashing a whole ViT checkpoint costs a second or more on every run; weights that differ differ in
    their first megabytes (embedding and first-layer tensors), so the edges identify them in practice.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(edge_bytes))
        if size > 2 * edge_bytes:
            handle.seek(-edge_bytes, os.SEEK_END)
            digest.update(handle.read(edge_bytes))
        else:
            digest.update(handle.read())
    return digest.hexdigest()[:12]
