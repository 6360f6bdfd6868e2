"""Verify: is a candidate pair the *same photograph* (edited), or two photos that merely look alike?

Global embeddings put two photos of one sitter from one studio session as close as an edited copy.
Local features and the pixels tell them apart. An edited copy (re-encoded, resized, cropped,
rotated, bordered, mirrored, captioned, recoloured) maps onto the original by one similarity
transform; once aligned, nothing *moved*: what differs is noise (compression, resampling), spread
over the picture. A different photo of the same person moved: the mouth, the eyes, the head
against the backdrop, by a few pixels each, in places.

So a pair is compared in three steps:
1. ORB matches and a RANSAC similarity transform (tried against the mirror image too) align them;
   the share of matches that fit it (inlier ratio) must show that the alignment is real.
2. Both pictures go to the **smaller picture's scale** (at most `_SIDE`): a 48 px copy is compared
   with the original shrunk to 48 px, not blown up to 400, so downscaling costs a copy nothing.
   ECC refines the alignment there.
3. At that scale: the median normalised correlation of textured blocks, and inside the face (the
   largest face the faces stage's MTCNN found, shared rather than detected again) on its own, since a template with another person's face shares
   backdrop and suit; and the residual **motion**, the 95th percentile of the dense optical flow
   over textured pixels. Compression noise lowers correlations but moves nothing, an expression
   change moves a few pixels: the motion limit is a share of the picture (`max_motion_share`) but
   never below the flow's own noise floor in pixels (`motion_floor_px`), which is what a 48 px
   comparison can resolve.

A verdict does not depend on which picture comes first: where b aligned onto a but was not
accepted, a is aligned onto b too, and either direction can accept. The directions differ in whose
face is measured and on whose plane; a picture that shows no face of its own (a crop through it, a
copy too small for the detector) is judged by the other's face carried over by the alignment.

Thresholds are calibrated by `bench/calibrate_verify.py` on some folders of the development corpus
and reported on the others (docs/methodology.md has the figures).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.config import ThresholdsConfig

_SIDE = 400  # longest side at which keypoints are found and pictures are compared at most
_BLOCK = 25  # block side at _SIDE; scaled with the comparison, never below _MIN_BLOCK
_FACE_BLOCK = 12
_MIN_BLOCK, _MIN_FACE_BLOCK = 6, 4
_N_FEATURES = 1000
_FLOW_SIDE = 200
_ECC_SIDE = 200
_ALIGNED = 0.5  # inlier ratio of a real alignment (different photos of one sitter reach 0.3-0.9)
_REFINE_REACH = 0.1  # what an affine refinement adds to the median block correlation at most (measured: < 0.06)
# What the refinement adds to the face's median at most, with a margin: on the calibration pairs it added < 0.1 to any
# accepted pair's, and no accepted pair's was below 0.82 before it (bench/calibrate_verify.py prints the latter).
_FACE_REFINE_REACH = 0.3
_MAX_OVERLAY = 0.3  # share of the picture a caption, banner or logo covers at most
_SHRUNK_SIZES = 4  # comparison sizes a picture keeps its shrunk plane at (a few: one per smaller partner)


VERSION = 7  # change with the measurement, so cached verdicts are not reused (6: the faces stage's face box; 7: both directions)


@dataclass(frozen=True)
class VerifyParams:
    """The thresholds of a verdict; `thresholds.verify_*` in the settings, where their defaults are."""

    min_inlier_ratio: float
    min_block_correlation: float
    min_face_correlation: float
    max_motion_share: float
    motion_floor_px: float
    # Below this comparison side an expression change moves less than the flow can resolve (a smile
    # at 60 px is under a pixel): the pictures must then agree closely block by block instead.
    detail_side: int
    min_small_correlation: float
    # The 10th percentile of the face's blocks: a changed mouth or eye is a few blocks, which the
    # median does not see. Compression lowers every block, so the floor is lower at full size.
    min_face_floor: float
    min_small_face_floor: float
    # The spread-noise rule, an alternative to the rule above: a copy degraded by downscaling or
    # compression (or both) loses correlation everywhere alike, another photo of the sitter in the
    # face. Where the face's residual is at most `max_face_residual_ratio` times the whole picture's,
    # lower correlations pass; the motion limit keeps its share but a floor that compression noise
    # needs, and the face's worst blocks must still agree.
    max_face_residual_ratio: float
    min_noisy_correlation: float
    min_noisy_face_floor: float
    noisy_motion_floor_px: float

    @classmethod
    def from_thresholds(cls, thresholds: ThresholdsConfig | None = None) -> VerifyParams:
        """From the settings' `thresholds.verify_*` (their defaults where none are given)."""
        from pipeline.config import ThresholdsConfig

        values = (thresholds or ThresholdsConfig()).model_dump()
        return cls(**{field.name: values[f"verify_{field.name}"] for field in dataclasses.fields(cls)})

    def motion_limit(self, side: float | np.ndarray) -> float | np.ndarray:
        """Largest residual motion (pixels at a comparison of `side` px) that an edited copy shows."""
        return np.maximum(self.motion_floor_px, self.max_motion_share * side)

    def accepts(
        self,
        ratio: float,
        correlation: float,
        face: float | None,
        motion: float,
        side: int,
        face_floor: float | None = None,
        residual_ratio: float | None = None,
    ) -> bool:
        measures = (ratio, correlation, face, motion, side, face_floor, residual_ratio)
        return bool(self.accepted(*(np.nan if value is None else value for value in measures)))

    def accepted(self, ratio, correlation, face, motion, side, face_floor, residual_ratio):  # noqa: ANN001, ANN201 - numbers or arrays alike
        """The rules, on single measures or element-wise on arrays of them (a calibration tries them on
        thousands of pairs at once); NaN face measures: no face found, the face rules do not apply
        (and the spread-noise rule, which needs a face, does not either)."""
        small = side < self.detail_side
        block_min = np.where(small, max(self.min_block_correlation, self.min_small_correlation), self.min_block_correlation)
        face_min = np.where(small, max(self.min_face_correlation, self.min_small_correlation), self.min_face_correlation)
        floor_min = np.where(small, max(self.min_face_floor, self.min_small_face_floor), self.min_face_floor)
        clean = (
            (ratio >= self.min_inlier_ratio) & (correlation >= block_min) & (np.isnan(face) | (face >= face_min))
            & (np.isnan(face_floor) | (face_floor >= floor_min)) & (motion <= self.motion_limit(side))
        )  # fmt: skip
        with np.errstate(invalid="ignore"):
            spread = (
                (ratio >= self.min_inlier_ratio) & (residual_ratio <= self.max_face_residual_ratio)
                & (correlation >= self.min_noisy_correlation) & (face_floor >= self.min_noisy_face_floor)
                & (motion <= np.maximum(self.noisy_motion_floor_px, self.max_motion_share * side))
            )  # fmt: skip
        return clean | spread

    @property
    def face_needed(self) -> float:
        """The face's median block correlation that some rule needs at least: the clean rule needs its
        face minimum and its floor (a 10th percentile, never above the median), the spread-noise rule its floor."""
        return min(max(self.min_face_correlation, self.min_face_floor), self.min_noisy_face_floor)

    @property
    def cache_id(self) -> str:
        return (
            f"v{VERSION}-r{self.min_inlier_ratio:g}-b{self.min_block_correlation:g}-f{self.min_face_correlation:g}"
            f"-m{self.max_motion_share:g}-p{self.motion_floor_px:g}-d{self.detail_side}-s{self.min_small_correlation:g}-l{self.min_face_floor:g}-{self.min_small_face_floor:g}"
            f"-n{self.max_face_residual_ratio:g}-{self.min_noisy_correlation:g}-{self.min_noisy_face_floor:g}-{self.noisy_motion_floor_px:g}"
        )


@dataclass(frozen=True)
class Features:
    grey: np.ndarray  # at _SIDE; not equalised: correlation is brightness-invariant anyway, and
    # equalising would blow sensor grain in flat regions up into blocks of pure noise
    keypoints: np.ndarray  # (n, 2) float32 positions on `grey`
    descriptors: np.ndarray | None  # (n, 32) uint8 ORB descriptors
    face: tuple[int, int, int, int] | None = None  # largest face (x, y, w, h) on `grey`, if any
    native_side: int = _SIDE  # the picture's own longest side: how much detail it really has
    # `grey` at the comparison sizes it was shrunk to (`shrunk`). Not a field of a copy or a
    # comparison: `dataclasses.replace` and pickling start it empty.
    _shrunk: dict[tuple[int, int], np.ndarray] = dataclasses.field(default_factory=dict, init=False, repr=False, compare=False)

    def shrunk(self, size: tuple[int, int]) -> np.ndarray:
        """`grey` resized to `size` (width, height) by area averaging, once per size: a photo is the
        first picture of many of its pairs in a row (`cache_friendly_order`), most often at one
        comparison side (where it is the smaller picture), and a shrink that is not by a whole factor
        costs about as much as the block correlations of the pair."""
        import cv2

        if size == (self.grey.shape[1], self.grey.shape[0]):  # the plane itself (a resize would copy it)
            plane = self.grey.view()
            plane.flags.writeable = False
            return plane
        if size not in self._shrunk:
            if len(self._shrunk) >= _SHRUNK_SIZES:
                self._shrunk.clear()
            shrunk = cv2.resize(self.grey, size, interpolation=cv2.INTER_AREA)
            shrunk.flags.writeable = False  # shared by the pair comparisons that follow
            self._shrunk[size] = shrunk
        return self._shrunk[size]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shrunk": {}}


@dataclass(frozen=True)
class Verdict:
    same_photo: bool
    inlier_ratio: float
    block_correlation: float
    n_inliers: int
    face_correlation: float | None = None  # None: no face found, the face rule did not apply
    motion: float = float("inf")  # residual motion in pixels at `compared_side` (90th percentile over blocks)
    compared_side: int = 0  # the longest side both pictures were compared at
    face_floor: float | None = None  # 10th percentile of the face's block correlations
    residual_ratio: float | None = None  # the face's residual against the whole picture's (None: no face)
    unrefined_face_correlation: float | None = None  # the face's median before the ECC refinement (what a calibration bounds)


Box = tuple[int, int, int, int]  # x, y, width, height


def detected_face(rgb: Image.Image, score_floor: float = 0.9) -> Box | None:
    """The largest face as the faces stage finds and stores it (MTCNN, in the picture downscaled to
    its working side): for callers without the faces stage's cache."""
    from pipeline.features.faces import detect_faces, downscaled

    faces = detect_faces(downscaled(rgb), score_floor)
    return (faces[0].x, faces[0].y, faces[0].width, faces[0].height) if faces else None


def features(rgb: Image.Image, face: Box | None | str = "detect", known: dict[str, np.ndarray] | None = None) -> tuple[Features, Features]:
    """ORB features of a picture and of its mirror image (mirrored copies are edits too).

    `face`: the largest face as the faces stage stores it (`face_signals.face_boxes`: in the picture
    downscaled to `faces.WORKING_SIDE`), None where it found none, "detect" to find it here.
    `known`: this picture's kept keypoints (`read_keypoints`), from an earlier run: ORB (70% of the
    cost) is skipped where they fit the picture's plane (`keypoints_fit`), and run where they do not."""
    import cv2

    from pipeline.features.faces import WORKING_SIDE

    if face == "detect":
        face = detected_face(rgb)
    grey = np.asarray(ImageOps.grayscale(rgb))
    native_side = max(grey.shape)
    height, width = plane_shape(rgb.width, rgb.height)
    # Area averaging to shrink; a smooth (not blocky) enlargement, whose pixel steps would be corners to ORB.
    resample = cv2.INTER_AREA if _SIDE < native_side else cv2.INTER_CUBIC
    grey = cv2.resize(grey, (width, height), interpolation=resample)
    orb = cv2.ORB_create(nfeatures=_N_FEATURES, fastThreshold=5)
    box = None
    if isinstance(face, tuple):
        to_grey = max(grey.shape) / min(native_side, WORKING_SIDE)  # the stored box's picture -> `grey`
        box = tuple(int(round(v * to_grey)) for v in face)

    stored = known if keypoints_fit(known, grey.shape) else None

    def describe(plane: np.ndarray, face_box: Box | None, view: str) -> Features:
        if stored is not None:
            return _stored_view(stored, view, plane, face_box, native_side)
        # Keypoints on the equalised plane: brightness, contrast and greyscale edits stop mattering.
        keypoints, descriptors = orb.detectAndCompute(cv2.equalizeHist(plane), None)
        points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
        return Features(plane, points, descriptors, face_box, native_side)

    mirrored_face = None if box is None else (grey.shape[1] - box[0] - box[2], box[1], box[2], box[3])
    return describe(grey, box, ""), describe(np.ascontiguousarray(grey[:, ::-1]), mirrored_face, "mirror_")  # type: ignore[arg-type]


KEYPOINTS_VERSION = 1  # change with _SIDE, _N_FEATURES or the ORB settings: kept keypoints are then not reused


def plane_shape(width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of the plane `features` finds keypoints on, for a picture of this size (as
    intake stores it: after EXIF orientation): its longest side at `_SIDE`."""
    scale = _SIDE / max(width, height)
    return max(1, round(height * scale)), max(1, round(width * scale))


def keypoint_views(kept: dict[str, np.ndarray]) -> tuple[Features, Features]:
    """A picture's two views from its kept keypoints alone (`read_keypoints`), without its plane: what
    `verify` needs to find that a pair does not align (most candidates of a night), for which the
    photo is then never decoded. Their plane, face and side are placeholders, read only by a
    comparison after an alignment, for which `verify` takes the full views (`with_planes`)."""
    return _stored_view(kept, "", _NO_PLANE, None, 0), _stored_view(kept, "mirror_", _NO_PLANE, None, 0)


def has_plane(views: tuple[Features, Features]) -> bool:
    return views[0].grey.size > 0


def keypoint_bytes(views: tuple[Features, Features]) -> bytes:
    """What of a picture's `features` is kept between runs (~80 KB): its ORB keypoints and descriptors
    in both views, and the plane they were found on (its shape). Not the plane itself, which is a
    picture: it is made again from the stored photo."""
    import io

    buffer = io.BytesIO()
    np.savez(buffer, shape=np.asarray(views[0].grey.shape), **_keypoint_arrays(views))
    return buffer.getvalue()


def read_keypoints(data: bytes) -> dict[str, np.ndarray] | None:
    """`keypoint_bytes`' arrays; None where they are unreadable. Read once per photo and run: an
    .npz's arrays each cost a header parse, ~0.1 ms."""
    import io
    import zipfile

    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return {name: stored[name] for name in ("shape", *_KEYPOINT_ARRAYS)}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def keypoints_fit(kept: dict[str, np.ndarray] | None, plane_shape: tuple[int, ...]) -> bool:
    """Whether kept keypoints (`read_keypoints`) were found on a plane of this shape: a picture
    replaced under the same content hash cannot happen, but a plane size changed by a version can."""
    return kept is not None and tuple(kept["shape"]) == tuple(plane_shape)


_NO_PLANE = np.zeros((0, 0), np.uint8)


def save_features(path: str, views: tuple[Features, Features]) -> None:
    """A picture's `features` in one file (~0.2 MB): computed once per run and read back by whichever
    worker verifies a pair of it, often a hundred times a night. Pickled, not an .npz: an .npz costs
    ~0.5 ms to write or read (a zip entry and a parsed header per array), a pickle ~0.1 ms. The file
    is this run's own, in a folder only this user can write (`tempfile.mkdtemp`). The mirror image's
    grey plane is not stored: it is the direct one flipped."""
    import pickle

    direct, mirrored = views
    with open(path, "wb") as file:
        pickle.dump((direct, dataclasses.replace(mirrored, grey=_NO_PLANE)), file, protocol=pickle.HIGHEST_PROTOCOL)


def load_features(path: str) -> tuple[Features, Features]:
    """`save_features`' views, equal to those saved."""
    import pickle

    with open(path, "rb") as file:
        direct, mirrored = pickle.load(file)  # noqa: S301 - written by this run, see save_features
    return direct, dataclasses.replace(mirrored, grey=np.ascontiguousarray(direct.grey[:, ::-1]))


# The arrays of a picture's two views that `keypoint_bytes` keeps.
_KEYPOINT_ARRAYS = ("keypoints", "descriptors", "mirror_keypoints", "mirror_descriptors")


def _keypoint_arrays(views: tuple[Features, Features]) -> dict[str, np.ndarray]:
    """Both views' keypoints and descriptors under `_KEYPOINT_ARRAYS`' names (no descriptors: an empty array)."""
    arrays = {}
    for prefix, view in zip(("", "mirror_"), views):
        arrays[f"{prefix}keypoints"] = view.keypoints
        arrays[f"{prefix}descriptors"] = view.descriptors if view.descriptors is not None else np.zeros((0, 32), np.uint8)
    return arrays


def _stored_view(stored: dict[str, np.ndarray], prefix: str, plane: np.ndarray, face: Box | None, native_side: int) -> Features:
    """One view rebuilt from `_keypoint_arrays`' arrays (`prefix`: "" or "mirror_") and its plane."""
    descriptors = stored[f"{prefix}descriptors"]
    return Features(plane, stored[f"{prefix}keypoints"], descriptors if len(descriptors) else None, face, native_side)


def _block_correlations(a: np.ndarray, b_warped: np.ndarray, valid: np.ndarray, block: int = _BLOCK) -> np.ndarray:
    """Normalised cross-correlation of each textured block inside the overlap.

    From each block's sums of a, b, a², b² and ab, in integers: the same correlations as centring
    each block first (to the last bits of a float), at a third of the time (no copy of every block),
    and a block's texture test (its standard deviation at least 4) is exact."""
    rows, cols = a.shape[0] // block, a.shape[1] // block
    if not rows or not cols:
        return np.zeros(0)
    height, width, n = rows * block, cols * block, block * block

    def sums(plane: np.ndarray) -> np.ndarray:
        # The block's rows first, along memory and in int32 (a column of a block holds at most
        # `block` products of 255 x 255: exact below 33,000 rows), then its columns in int64. One
        # reduction over both axes strides across rows: the whole function took three times as long
        # (0.65 against 0.22 ms at 400 x 300 px), the largest cost of a pair after the ORB matching.
        by_column = plane.reshape(rows, block, width).sum(axis=1, dtype=np.int32)
        return by_column.reshape(rows, cols, block).sum(axis=2, dtype=np.int64).ravel()

    a_int, b_int = a[:height, :width].astype(np.int32), b_warped[:height, :width].astype(np.int32)
    sum_a, sum_b = sums(a_int), sums(b_int)
    # n² times each block's variance and covariance: exact in int64 (under 2e14 even for 8-bit blocks of 200 px sides)
    spread_a, spread_b = n * sums(a_int * a_int) - sum_a * sum_a, n * sums(b_int * b_int) - sum_b * sum_b
    inside = sums(valid[:height, :width].astype(np.int32)) >= 0.99 * n  # outside the overlap: borders, cropped-away parts
    textured = spread_a >= 16 * n * n  # a flat backdrop says nothing about sameness
    keep = inside & textured & (spread_b > 0)
    covariance = (n * sums(a_int * b_int) - sum_a * sum_b)[keep]
    return covariance / np.sqrt(spread_a[keep].astype(float) * spread_b[keep].astype(float))


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if len(values) else 0.0


Alignment = tuple["np.ndarray | None", float, int]  # `_similarity_transform`'s (transform, inlier ratio, inliers)


def _similarity_transform(a: Features, b: Features) -> Alignment:
    """(2x3 transform from a's to b's plane, inlier ratio, inliers) from ORB matches and RANSAC."""
    import cv2

    if a.descriptors is None or b.descriptors is None or len(a.keypoints) < 8 or len(b.keypoints) < 8:
        return None, 0.0, 0
    query, train = _ratio_matches(a.descriptors, b.descriptors)
    if len(query) < 6:
        return None, 0.0, len(query)
    points_a, points_b = a.keypoints[query], b.keypoints[train]
    cv2.setRNGSeed(0)  # RANSAC draws from a per-thread RNG: seed it, or verdicts depend on scheduling
    transform, inliers = cv2.estimateAffinePartial2D(
        points_a, points_b, method=cv2.RANSAC, ransacReprojThreshold=3.0, maxIters=2000, confidence=0.99
    )
    if transform is None:
        return None, 0.0, 0
    n_inliers = int(inliers.sum())
    return transform, n_inliers / len(query), n_inliers


def _ratio_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (in `query`, in `train`) of the ORB descriptors whose nearest neighbour by Hamming
    distance is clearly nearer than the second (Lowe's ratio test at 0.8), in query order.

    faiss's binary flat search, not OpenCV's BFMatcher: the same two nearest distances (ties at the
    nearest fail the ratio test either way, so the matches are the same), as arrays instead of a
    Python object per match, at a third of the time (the matching was half of verification's)."""
    import faiss

    if len(train) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexBinaryFlat(train.shape[1] * 8)
    index.add(np.ascontiguousarray(train))
    distances, nearest = index.search(np.ascontiguousarray(query), 2)
    good = np.flatnonzero(distances[:, 0] < 0.8 * distances[:, 1])
    return good, nearest[good, 0]


def _refine(a: np.ndarray, b: np.ndarray, valid: np.ndarray, block: int, correlation: float) -> tuple[np.ndarray, np.ndarray, float]:
    """b (already roughly aligned to a) after an ECC affine refinement, its valid mask and the median
    block correlation, where that raises the correlation (`correlation` before); unchanged otherwise
    (ECC has no outlier rejection: a caption or a logo can pull it off)."""
    import cv2

    # The refinement is estimated at most at _ECC_SIDE (ECC is sub-pixel there too, at a quarter of
    # the cost at 400 px), and its translation scaled back to the comparison scale.
    shrink = min(1.0, _ECC_SIDE / max(a.shape))
    small_a, small_b, small_valid = a, b, valid.astype(np.uint8)
    if shrink < 1.0:
        size = (max(1, round(a.shape[1] * shrink)), max(1, round(a.shape[0] * shrink)))
        small_a, small_b = cv2.resize(a, size, interpolation=cv2.INTER_AREA), cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        small_valid = cv2.resize(small_valid, size, interpolation=cv2.INTER_NEAREST)
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(
            small_a.astype(np.float32), small_b.astype(np.float32), warp, cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-4), small_valid, 3,
        )  # fmt: skip
    except cv2.error:
        return b, valid, correlation
    warp[:, 2] /= shrink
    size = (a.shape[1], a.shape[0])
    refined = cv2.warpAffine(b, warp, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    moved = cv2.warpAffine(valid.astype(np.uint8), warp, size, flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP) > 0
    refined_valid = valid & moved
    after = _median(_block_correlations(a, refined, refined_valid, block))
    return (refined, refined_valid, after) if after > correlation else (b, valid, correlation)


def _matched_tones(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """b with its grey levels mapped onto a's (histogram matching over the overlap): optical flow
    assumes constant brightness, and brightness, contrast and tone edits must not look like motion."""
    if valid.sum() < 16:
        return b
    levels = np.arange(256)
    cdf_a = np.cumsum(np.bincount(a[valid], minlength=256)) / valid.sum()
    cdf_b = np.cumsum(np.bincount(b[valid], minlength=256)) / valid.sum()
    # One table of 256 grey levels, then a lookup: the same mapping as interpolating every pixel.
    return np.interp(cdf_b, cdf_a, levels).astype(np.uint8)[b]


def _local_correlation(a: np.ndarray, b: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel correlation of a and b over a window, and each one's local standard deviation."""
    import cv2

    a, b = a.astype(np.float32), b.astype(np.float32)
    mean = lambda plane: cv2.boxFilter(plane, -1, (window, window))  # noqa: E731
    mean_a, mean_b = mean(a), mean(b)
    var_a = np.maximum(mean(a * a) - mean_a**2, 0)
    var_b = np.maximum(mean(b * b) - mean_b**2, 0)
    covariance = mean(a * b) - mean_a * mean_b
    return covariance / np.sqrt(var_a * var_b + 1e-6), np.sqrt(var_a), np.sqrt(var_b)


def _painted_over(unrelated: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    """The regions of `unrelated` pixels (b does not follow a there) that reach the edge of the
    picture or of the overlap, where captions, banners and logos go: each one's bounding box where
    that is at most `_MAX_OVERLAY` of the picture (a logo on a flat backdrop shows only its outline),
    else the region itself; grown by a window. A moved mouth or eye lies inside the picture and stays,
    so an expression change cannot hide there."""
    import cv2

    closed = cv2.morphologyEx(unrelated.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((window, window), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed)
    rim = cv2.dilate((~valid).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    rim[[0, -1], :] = rim[:, [0, -1]] = True
    painted = np.zeros(unrelated.shape, np.uint8)
    for label in np.unique(labels[rim]):
        if label == 0:
            continue
        x, y, w, h = stats[label, :4]
        if w * h <= _MAX_OVERLAY * unrelated.size:
            painted[y : y + h, x : x + w] = 1
        else:
            painted[labels == label] = 1
    # Grown by what the flow's coarsest level (a quarter of the resolution) sees of the region's edge.
    return cv2.dilate(painted, np.ones((3 * window, 3 * window), np.uint8)) > 0


def _motion(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """How far parts of b moved against a, in pixels of a: dense optical flow, where both pictures show
    the same textured content (not a flat backdrop, which "moves" at random, and not where an overlay
    replaced the picture: there nothing moved, it was painted over).

    Measured at most at _FLOW_SIDE (dense flow costs ~70 ms at 400 px, ~15 ms at 200 px) and scaled back."""
    import cv2

    shrink = min(1.0, _FLOW_SIDE / max(a.shape))
    if shrink < 1.0:
        size = (max(1, round(a.shape[1] * shrink)), max(1, round(a.shape[0] * shrink)))
        a, b = cv2.resize(a, size, interpolation=cv2.INTER_AREA), cv2.resize(b, size, interpolation=cv2.INTER_AREA)
        valid = cv2.resize(valid.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    window = max(7, round(15 * max(a.shape) / _SIDE))
    correlation, spread_a, spread_b = _local_correlation(a, b, window)
    # Where b does not show a's content (outside the overlap, or painted over by a caption or a logo),
    # b takes a's pixels: the flow's coarse levels would otherwise drag the edge of that region across
    # its neighbours, and nothing there moved. Tones are matched on the rest only.
    textured_a, textured_b = spread_a > 3, spread_b > 3
    flat_a, flat_b = spread_a < 1.5, spread_b < 1.5
    unrelated = valid & (((correlation < 0.3) & (textured_a | textured_b)) | (textured_a & flat_b) | (flat_a & textured_b))
    replaced = _painted_over(unrelated, valid, window)
    # Where b is clipped to pure white or black and a is not (a brightness edit), nothing can be measured.
    clipped = textured_a & flat_b & ((b >= 250) | (b <= 5))
    replaced |= cv2.dilate(clipped.astype(np.uint8), np.ones((window, window), np.uint8)) > 0
    shows_a = valid & ~replaced
    b = np.where(shows_a, _matched_tones(a, b, shows_a), a)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, window, 3, 5, 1.1, 0) / shrink
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    keep = shows_a & textured_a & textured_b
    # Per block, the median motion of its measurable pixels; then the 90th percentile over blocks. A
    # moved mouth or eye moves whole blocks; the flow's stray pixels (saturated highlights, the rim of
    # a logo) do not.
    rows, cols = a.shape[0] // window, a.shape[1] // window
    if not rows or not cols:
        return float("inf")

    def blocks(plane: np.ndarray) -> np.ndarray:
        return plane[: rows * window, : cols * window].reshape(rows, window, cols, window).swapaxes(1, 2).reshape(rows * cols, -1)

    magnitudes, kept = blocks(magnitude), blocks(keep)
    measurable = kept.mean(axis=1) >= 0.5
    if measurable.sum() < 4:
        return float("inf")
    medians = np.nanmedian(np.where(kept[measurable], magnitudes[measurable], np.nan), axis=1)
    return float(np.percentile(medians, 90))


def _compare(a: Features, b: Features, params: VerifyParams | None, alignment: Alignment | None = None) -> Verdict:
    """Align b onto a (or take `alignment`, `_similarity_transform`'s of the two) and measure them at
    the smaller picture's scale; the motion (the costly measure) only where the others pass `params`
    (always, where params is None: calibration)."""
    import cv2

    transform, ratio, n_inliers = alignment if alignment is not None else _similarity_transform(a, b)
    # Both rules need a real alignment: without one, nothing else is measured (most candidates of a
    # uniform studio page end here, before the warps, the refinement and the flow).
    if transform is None or (params is not None and ratio < params.min_inlier_ratio):
        return Verdict(False, ratio, 0.0, n_inliers)
    side = min(_SIDE, a.native_side, b.native_side)
    scale = side / max(a.grey.shape)
    size = (max(1, round(a.grey.shape[1] * scale)), max(1, round(a.grey.shape[0] * scale)))
    # b onto a's plane, then both down to the comparison scale by one and the same filter: a copy
    # resampled differently from its original would look less alike than it is.
    back = cv2.invertAffineTransform(transform)
    plane = (a.grey.shape[1], a.grey.shape[0])
    b_on_a = cv2.warpAffine(b.grey, back, plane, flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.full(b.grey.shape, 255, np.uint8), back, plane, flags=cv2.INTER_NEAREST)
    a_small = a.shrunk(size)
    b_small, valid = (cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (b_on_a, valid))
    valid = cv2.erode((valid == 255).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # resampled edges are not the picture
    block = max(_MIN_BLOCK, round(_BLOCK * scale))
    correlation = _median(_block_correlations(a_small, b_small, valid, block))
    face = a.face if a.face is not None else _mapped_box(b.face, back, plane)
    face_box = None if face is None else tuple(round(v * scale) for v in face)

    def face_measures(b_plane: np.ndarray, b_valid: np.ndarray) -> tuple[float | None, float | None]:
        """(median, 10th percentile) of the face's block correlations; (None, None) where too few blocks.
        Where two photos of one template differ is the face: it must agree on its own, in finer
        blocks, or a shared backdrop and suit would outvote it."""
        if face_box is None:
            return None, None
        x, y, w, h = face_box
        face_block = max(_MIN_FACE_BLOCK, round(_FACE_BLOCK * scale))
        in_face = _block_correlations(
            a_small[y : y + h, x : x + w], b_plane[y : y + h, x : x + w], b_valid[y : y + h, x : x + w], face_block
        )
        return (_median(in_face), float(np.percentile(in_face, 10))) if len(in_face) >= 4 else (None, None)

    face_correlation, face_floor = face_measures(b_small, valid)
    unrefined_face = face_correlation
    # The refinement (ECC, ~7 ms: most of what a pair of one template costs) only where it could make
    # the pair pass: the blocks agree nearly as much as a rule needs, and so does the face, less what a
    # refinement adds to it at most (`_FACE_REFINE_REACH`); two faces of one template stop here.
    if params is None or (correlation >= params.min_block_correlation - _REFINE_REACH
                          and (face_correlation is None or face_correlation >= params.face_needed - _FACE_REFINE_REACH)):  # fmt: skip
        b_small, valid, correlation = _refine(a_small, b_small, valid, block, correlation)
        face_correlation, face_floor = face_measures(b_small, valid)
    measures = (ratio, correlation, face_correlation)
    # The residual ratio is measured only where a rule could still pass with no motion and an evenly
    # spread residual (always for a calibration, where params is None): the rules decide, not a copy of them.
    could_pass = params is None or params.accepts(*measures, 0.0, side, face_floor, 0.0)
    residual_ratio = None if face_correlation is None or not could_pass else _face_residual_ratio(a_small, b_small, valid, face_box)
    if params is not None and not params.accepts(*measures, 0.0, side, face_floor, residual_ratio):
        return Verdict(False, *measures[:2], n_inliers, face_correlation, float("inf"), side, face_floor, residual_ratio, unrefined_face)
    motion = _motion(a_small, b_small, valid)
    same = params is not None and params.accepts(*measures, motion, side, face_floor, residual_ratio)
    return Verdict(same, ratio, correlation, n_inliers, face_correlation, motion, side, face_floor, residual_ratio, unrefined_face)


def _mapped_box(box: Box | None, transform: np.ndarray, plane: tuple[int, int]) -> Box | None:
    """`box` on b's picture carried onto a's plane by `transform` (b to a), as the box around its
    corners clipped to the plane; None where little of it lands there. Where only b shows a face
    (a crop cut through it, a copy too small for the detector), a is still judged by that face."""
    if box is None:
        return None
    x, y, w, h = box
    corners = np.array([[x, y, 1], [x + w, y, 1], [x, y + h, 1], [x + w, y + h, 1]], np.float64) @ np.asarray(transform, np.float64).T
    left, top = np.clip(corners.min(axis=0), 0, plane)
    right, bottom = np.clip(corners.max(axis=0), 0, plane)
    if (right - left) * (bottom - top) < 0.25 * w * h * abs(np.linalg.det(np.asarray(transform)[:, :2])):
        return None
    return int(round(left)), int(round(top)), int(round(right - left)), int(round(bottom - top))


_RESIDUAL_FLOOR = 0.3  # grey levels: a residual below this is no residual (an exact re-encoding)


def _face_residual_ratio(a: np.ndarray, b: np.ndarray, valid: np.ndarray, face: tuple[int, int, int, int]) -> float | None:
    """How much more a and b (aligned, at the comparison scale) differ inside the face than over the
    whole picture: the typical (median) local RMS residual after tone matching, face over all.
    Downscaling and compression spread their error over the picture (about 1); a different photo of
    the sitter differs in the face (2 and more on the corpus). None where too little is measurable."""
    import cv2

    window = max(3, round(max(a.shape) / 24))
    inside = cv2.erode(valid.astype(np.uint8), np.ones((window, window), np.uint8)) > 0
    x, y, w, h = face
    in_face = np.zeros_like(inside)
    in_face[y : y + h, x : x + w] = True
    in_face &= inside
    if in_face.sum() < 9:
        return None
    difference = a.astype(np.float32) - _matched_tones(a, b, valid).astype(np.float32)
    difference[~valid] = 0
    energy = cv2.boxFilter(difference * difference, -1, (window, window))
    level = lambda region: float(np.sqrt(np.median(energy[region])))  # noqa: E731
    return level(in_face) / max(level(inside), _RESIDUAL_FLOOR)


def verify(
    a: tuple[Features, Features],
    b: tuple[Features, Features],
    params: VerifyParams | None = None,
    with_planes: Callable[[], tuple[tuple[Features, Features], tuple[Features, Features]]] | None = None,
) -> Verdict:
    """Whether a and b are one photograph (default thresholds where `params` is None): b aligned
    onto a, then, where that aligned but was not accepted, a onto b.

    The two directions measure different things: the face is the one found in the first picture,
    and the comparison runs on the first picture's plane. A copy whose face was lost (a crop through
    it, a downscale too small for the detector) is measured by its original's face only the other
    way round, so a pair's verdict must not depend on which picture came first (the content hashes'
    order). A pair that did not align either way is not compared twice.

    `with_planes`: where a or b are `keypoint_views` (no plane), what gives both pictures' full
    views, called only where b aligns onto a in a view: the verdict is the one the full views give."""
    params = params or VerifyParams.from_thresholds()
    alignments = _forward_alignments(a, b, params)
    if with_planes is not None and not all(_unaligned(alignment, params) for alignment in alignments):
        a, b = with_planes()
    forward = _verify_one_way(a, b, params, alignments)
    if forward.same_photo or not _worth_reversing(forward.inlier_ratio, forward.block_correlation, params):
        return forward
    backward = _verify_one_way(b, a, params)
    return backward if backward.same_photo else forward


def _forward_alignments(a: tuple[Features, Features], b: tuple[Features, Features], params: VerifyParams) -> list[Alignment | None]:
    """b's direct view aligned onto a, and its mirror image's where the direct one did not align
    (None: left to `_compare`, which a pair that aligns directly may never reach)."""
    direct = _similarity_transform(a[0], b[0])
    return [direct, _similarity_transform(a[0], b[1]) if _unaligned(direct, params) else None]


def _unaligned(alignment: Alignment | None, params: VerifyParams) -> bool:
    """Where `_compare` stops before the planes: no transform, or too few of the matches fit it."""
    return alignment is not None and (alignment[0] is None or alignment[1] < params.min_inlier_ratio)


def _worth_reversing(ratio, correlation, params: VerifyParams):  # noqa: ANN001, ANN201 - numbers or arrays alike
    """Whether the other direction could decide otherwise: the pair aligned, and agreed as much as
    some rule needs less what a refinement adds (block correlation at one scale barely depends on
    which picture is aligned onto which; most different photos of one template stop here)."""
    return (ratio >= params.min_inlier_ratio) & (
        correlation >= min(params.min_block_correlation, params.min_noisy_correlation) - _REFINE_REACH
    )


def _verify_one_way(
    a: tuple[Features, Features], b: tuple[Features, Features], params: VerifyParams, alignments: list[Alignment | None] | None = None
) -> Verdict:
    """Compare picture a with b, then (if that fails) with b's mirror image (`alignments`: of b's
    views onto a, where known)."""
    best = Verdict(False, 0.0, 0.0, 0)
    for view, b_view in enumerate(b):
        verdict = _compare(a[0], b_view, params, None if alignments is None else alignments[view])
        if verdict.same_photo:
            return verdict
        if verdict.inlier_ratio > best.inlier_ratio:
            best = verdict
        if aligned(verdict.inlier_ratio, verdict.block_correlation, params):
            break  # the direct view is the right way round: a mirror image would not align better
    return best


def aligned(ratio, correlation, params: VerifyParams):  # noqa: ANN001, ANN201 - numbers or arrays alike
    """Whether a view aligned for real: most matches fit, and the aligned pictures agree nearly as
    much as a copy must (a mirrored copy of a symmetric face can fit half its matches the wrong way
    round, but its blocks then disagree)."""
    return (ratio >= _ALIGNED) & (correlation >= params.min_block_correlation - _REFINE_REACH)


def as_measures(verdicts: list[Verdict]) -> np.ndarray:
    """(views, 7) float array of `measure_views`' verdicts, in `VerifyParams.accepted`'s order, NaN for None."""
    rows = [
        (v.inlier_ratio, v.block_correlation, v.face_correlation, v.motion, v.compared_side, v.face_floor, v.residual_ratio)
        for v in verdicts
    ]
    return np.array([[np.nan if value is None else value for value in row] for row in rows], dtype=float)


def accepted_views(params: VerifyParams, views: np.ndarray) -> np.ndarray:
    """`verify`'s decision on many pairs at once from their `measure_views` (pairs, 4 views, 7
    measures: `as_measures` of each pair): what a calibration tries thresholds with. Each
    direction's mirror view counts only where its direct view did not align, and the second
    direction only where the first was worth reversing."""
    ok = params.accepted(*(views[..., i] for i in range(views.shape[-1])))
    ratio, correlation = views[..., 0], views[..., 1]

    def one_way(direct: int) -> np.ndarray:  # `_verify_one_way`: the mirror view (direct + 1) only where the direct one did not align
        return ok[:, direct] | (ok[:, direct + 1] & ~aligned(ratio[:, direct], correlation[:, direct], params))

    forward, backward = one_way(0), one_way(2)
    # The view `verify` reports for the first direction: the direct one where it aligned, else the one
    # with more inliers (the direct one on a tie).
    reported = np.where(aligned(ratio[:, 0], correlation[:, 0], params) | (ratio[:, 0] >= ratio[:, 1]), 0, 1)
    rows = np.arange(len(views))
    return forward | (backward & _worth_reversing(ratio[rows, reported], correlation[rows, reported], params))


def measure_views(a: tuple[Features, Features], b: tuple[Features, Features]) -> list[Verdict]:
    """The measures `verify` takes, judged by nothing (what a calibration needs to try other
    thresholds): b and b's mirror image aligned onto a, then a and a's mirror image onto b."""
    return [_compare(a[0], b_view, None) for b_view in b] + [_compare(b[0], a_view, None) for a_view in a]
