"""``fit``: from photos to 3D face meshes and head poses.

Stages (every stage batched over faces):

1. **detect** faces (:mod:`fitting.detect`; or boxes / landmarks given by the user);
2. **crop** each face with the standard box (:mod:`morphable.crop`) to the regressor's input size;
3. **regress** shape, expression, rotation, scale, translation and 68 landmarks
   (:mod:`regressors`); with a detector box the crop is re-centred once on the regressed
   landmarks (the box rule the regressor was trained with) and regressed again;
4. **refine** all faces at once with the batched Levenberg-Marquardt solver
   (:func:`fitting.solver.fit_landmarks`) against the landmark head's points (or the user's
   landmarks), starting from the regressed parameters;
5. build meshes aligned to the image (x, y pixels, y down; z = depth in pixels, larger nearer).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np
import torch

from morphable.crop import CropBox, box_from_landmarks, camera_to_image, crop_image, to_image
from morphable.errors import InputError
from morphable.geometry import depth, project, rotmat_to_angles
from morphable.model import MorphableModel

from regressors.networks import RegressorOutput

from .solver import FitOptions, FitParams, fit_landmarks

if TYPE_CHECKING:
    from morphable.texture import Texture

__all__ = ["CROP_SHIFT", "FitConfig", "Pose", "FaceFit", "CropFits", "Fitter", "fit", "fit_all", "fit_batch", "fit_crops"]

#: shift of the extra crops of ``FitConfig.shifted_crops`` along x and along y, as a fraction of the
#: box side (chosen on the validation split: 0.03 / 0.04 / 0.05 / 0.06 gave 3.698 / 3.681 / 3.686 /
#: 3.733 % fit NME with two crops)
CROP_SHIFT = 0.04

#: (dx, dy) sign patterns of the shifted crops, in the order they are added
_SHIFT_SIGNS = ((1, 1), (-1, -1), (1, -1), (-1, 1))


@dataclass
class FitConfig:
    """Options of the pipeline.

    Attributes:
        model: model name or path (None = the default ICT-FaceKit model).
        region, landmarks: ICT-FaceKit region and landmark definition of the default model
            (:func:`morphable.registry.load_model`; None = its defaults).
        weights: regressor weight file (None = the shipped default).
        refine: run the LM refinement after the regressor.
        iterations: LM iterations.
        shape_prior, expr_prior: LM prior weights.
        recrop: with detector boxes, re-crop once on the regressed landmarks.
        device: torch device for the regressor and the solver.
        threads: torch threads (None = leave as is).
        max_faces: faces per image at most (largest first), None = all.
        landmark_source: LM targets when no landmarks are given: ``"head"`` (the regressor's
            landmark head, 3D-style jaw) or ``"dlib"`` (dlib's 68-point predictor placed on the
            head's points, :mod:`fitting.landmarks_dlib`, fitted with a 2D sliding jaw; needs
            ``pip install -e ".[dlib]"``). The output landmarks are the model's fixed landmark
            vertices either way.
        detector: face detector when no boxes/landmarks are given (:func:`fitting.detect.make_detector`):
            ``"auto"`` (MediaPipe's BlazeFace, a few ms; dlib's MMOD CNN plus Haar only where it
            finds nothing), ``"blazeface"``, ``"mmod"``, ``"haar"`` or ``"mediapipe"``.
        flip_test: also run the regressor on the mirrored crop and average the two landmark heads
            (the LM targets): head NME on the validation split 4.15 -> 3.95 % (intermediate weights of
            the shipped run), twice the regressor time. With a re-crop, only the final pass is mirrored.
        flip_first_pass: also mirror the first pass, the one that only places the re-crop (validation
            split of 300-W through the detector: see the closing note of issue 18; costs one more crop
            per face).
        shifted_crops: also run the regressor on this many crops whose box is moved along its
            diagonals by :data:`CROP_SHIFT` of its side (0; 2: down-right and up-left; 4: all four
            corners, which keeps the head exactly mirror-equivariant; None = 4, or 0 with the fast
            preset), each mirrored too with ``flip_test``, and average all the landmark heads in image
            pixels (the LM targets; parameters come from the unshifted crop). All crops of a face run
            in one network call. Validation fit NME (``regressors.validate --pipeline``, 2,200 faces):
            3.717 % without, 3.602 % with 2 (r11 weights against labels v3; r10: 3.783 / 3.681; the
            r12 weights with 2: 3.551 % against labels v4, where r11 scores 3.772 and the r13
            weights 3.510; r14 3.343 against labels v5, r18 3.302; the shipped r22 weights 3.322 in float
            in session 21's check, where r18 also scores 3.302: r22's jaw follows the 2D-annotated
            sets on aflw21 faces by design, see the model card). With r22's U8U8 twin (session 23,
            an AVX2-only CPU): 3.330 % with 2, **3.309 % with 4**, pose MAE 2.741 -> 2.724 deg (faces
            within +-99 deg), 300-W + ytf68 rows 2.041 -> 2.037, aflw21 annotated points 3.549 ->
            3.537; 4 is the default since then (rule in the model card, session 23), shipped with the
            7-bit twin: 3.313 %, 2.731 deg. Ten crops per face instead of six: 21.1-22.0 ms for the
            7-bit twin at batch 10 on one thread of that CPU, against 17.2-17.5 ms for six crops with
            the earlier U8U8 twin. With a re-crop, only the final pass is shifted.
        int8: on onnxruntime, run the shipped static-int8 twin of the weights (``NAME.int8.onnx``,
            :mod:`regressors.quantize`, 7-bit signed weights, which do not saturate on x86 CPUs
            without VNNI: validation pipeline NME 3.332 % against 3.330 % for unsigned weights and
            3.323 % float on an AVX2-only CPU, about 1.55x faster than float there at batch 6) when it was made
            from exactly these weights; False: the float export.
        preset: ``"fast"``: the light regressor (``regressors/weights/fast.pt``, about 1 ms per face
            on one core; its model card has its accuracy) unless ``weights`` or ``$MORPHABLE_WEIGHTS``
            names another file.
        backend: how the regressor runs: ``"auto"`` (onnxruntime on the CPU when it is installed,
            exported once and cached, :func:`regressors.weights.onnx_runtime_for`; else torch),
            ``"onnx"`` (onnxruntime or an error) or ``"torch"``.
        min_face: smallest face the detector looks for, as a fraction of the image's shorter side
            (None = the detectors' defaults: what one BlazeFace pass finds, MMOD 0.25; a small value
            makes BlazeFace run on tiles and MMOD on a larger image, slower).
    """

    model: Optional[str] = None
    region: Optional[str] = None
    landmarks: Optional[str] = None
    weights: Optional[str] = None
    refine: bool = True
    iterations: int = 5
    shape_prior: float = 1.0
    expr_prior: float = 1.0
    recrop: bool = True
    device: str = "cpu"
    threads: Optional[int] = None
    max_faces: Optional[int] = None
    landmark_source: str = "head"
    detector: str = "auto"
    min_face: Optional[float] = None
    flip_test: bool = True
    flip_first_pass: bool = False
    shifted_crops: Optional[int] = None
    backend: str = "auto"
    int8: bool = True
    preset: Optional[str] = None


@dataclass
class Pose:
    """Head pose and fit of one face.

    Attributes:
        yaw, pitch, roll: degrees, AFLW2000-3D convention (:mod:`morphable.geometry`): positive yaw
            turns the face toward image-left, positive pitch raises it, positive roll moves the top
            of the head toward image-right.
        rotation: (3, 3) model -> camera rotation.
        scale: pixels per millimetre.
        translation: (2,) image pixels of the model origin.
        landmarks: (68, 2) fitted landmarks, image pixels (0-based, y down).
        rmse: reprojection RMSE (px) of the fitted landmarks against the targets.
        converged: LM convergence flag (False when refinement is off).
        box: (4,) [x0, y0, x1, y1] the face's crop box, pixels.
    """

    yaw: float
    pitch: float
    roll: float
    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    landmarks: np.ndarray
    rmse: float
    converged: bool
    box: np.ndarray

    def to_dict(self) -> dict:
        return {"yaw": self.yaw, "pitch": self.pitch, "roll": self.roll, "rotation": self.rotation.tolist(),
                "scale": self.scale, "translation": self.translation.tolist(), "landmarks": self.landmarks.tolist(),
                "rmse": self.rmse, "converged": self.converged, "box": self.box.tolist()}


@dataclass
class FaceFit:
    """One fitted face: mesh in image coordinates plus the pose and parameters.

    Attributes:
        vertices_img: (N, 3) x, y image px (y down), z = depth px (larger nearer).
        triangles: (T, 3) int64.
        landmarks: (68, 2) image px.
        rotation: (3, 3).
        angles_deg: (3,) [yaw, pitch, roll] degrees.
        scale: px per mm; translation: (2,) px.
        rmse, converged: fit quality.
        box: (4,) crop box [x0, y0, x1, y1] px.
        shape, expr: (Ks,), (Ke,) model coefficients.
        model_name: the model's name.
        uv: (N, 2) the model's texture coordinates in [0, 1] (v up), (0, 2) if it has none.
        mirror: (N,) each vertex's mirror vertex on the mean face, or None (no mirror filling).
        image_size: (H, W) of the photo, px, or None.
    """

    vertices_img: np.ndarray
    triangles: np.ndarray
    landmarks: np.ndarray
    rotation: np.ndarray
    angles_deg: np.ndarray
    scale: float
    translation: np.ndarray
    rmse: float
    converged: bool
    box: np.ndarray
    shape: np.ndarray = field(default_factory=lambda: np.zeros(0))
    expr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    model_name: str = ""
    uv: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)
    mirror: Optional[np.ndarray] = field(default=None, repr=False)
    image_size: Optional[tuple] = None

    @property
    def pose(self) -> Pose:
        y, p, r = (float(v) for v in self.angles_deg)
        return Pose(y, p, r, self.rotation, float(self.scale), self.translation, self.landmarks,
                    float(self.rmse), bool(self.converged), self.box)

    def mesh(self):
        """The mesh as a ``trimesh.Trimesh`` (image-aligned coordinates, model triangles)."""
        import trimesh

        return trimesh.Trimesh(self.vertices_img, self.triangles, process=False)

    def texture(self, image, size: int = 1024, **kw) -> "Texture":
        """The face's UV texture sampled from its photo, hidden parts filled from the mirror side.

        Args:
            image: the photo the face was fitted in: path, (H, W, 3) uint8 RGB array or PIL image.
            size: texture side, texels.
            kw: more :func:`morphable.texture.sample_texture` options (``min_cos``, ``tol``, ...).

        Returns:
            :class:`morphable.texture.Texture`: the (size, size, 3) texture image, the mesh in the
            image-aligned right-handed frame, and ``.save("face.glb" | "face.obj")``.

        Raises:
            ModelFormatError: the model has no texture coordinates.
            InputError: the image is not the photo's size.

        A face smaller than 64 px (the larger side of its 68 landmarks' box) gets a
        :class:`~morphable.errors.MorphableWarning`; the texture is still made.
        """
        from morphable.texture import face_size_px, sample_texture

        from .images import load_image

        img = load_image(image)
        if self.image_size is not None and tuple(img.shape[:2]) != tuple(self.image_size):
            raise InputError(f"the image is {img.shape[1]} x {img.shape[0]} px but the face was fitted in a "
                             f"{self.image_size[1]} x {self.image_size[0]} px photo; pass that photo")
        kw.setdefault("face_px", face_size_px(self.landmarks))
        return sample_texture(img, self.vertices_img, self.triangles, self.uv, mirror=self.mirror, size=size, **kw)

    def _size(self, shape) -> tuple:
        if shape is not None:
            return int(shape[0]), int(shape[1])
        if self.image_size is None:
            raise InputError("the photo's size is unknown: pass shape=(H, W)")
        return int(self.image_size[0]), int(self.image_size[1])

    def depth_map(self, shape: Optional[tuple] = None) -> np.ndarray:
        """(H, W) float64 depth of the face at each pixel of the photo, px (the image's pixel
        scale), larger = nearer the camera, NaN off the face (:func:`morphable.render.depth_map`).
        ``shape`` = (H, W), default the photo's."""
        from morphable.render import depth_map

        return depth_map(self.vertices_img, self.triangles, *self._size(shape))

    def normal_map(self, shape: Optional[tuple] = None) -> np.ndarray:
        """(H, W, 3) float64 unit surface normals at each pixel of the photo in the view frame (x
        right, y up, z toward the camera), 0 off the face (:func:`morphable.render.normal_map`)."""
        from morphable.render import normal_map

        return normal_map(self.vertices_img, self.triangles, *self._size(shape))


@dataclass
class CropFits:
    """Batched result of :func:`fit_crops` for B faces (torch tensors, image frame).

    Attributes:
        params: :class:`FitParams` in the image frame.
        landmarks: (B, 68, 2) image px of the model's 68 landmark vertices.
        landmarks3d: (B, 68, 3) x, y px and z = depth px (larger nearer).
        rotation: (B, 3, 3).
        head_landmarks: (B, 68, 2) the regressor's landmark head, image px.
        rmse: (B,) px between the fitted landmarks and the head's; converged: (B,) bool.
        boxes: (B, 3) [x0, y0, side] crop boxes used.
        timings: seconds per stage for the whole batch.
    """

    params: FitParams
    landmarks: torch.Tensor
    landmarks3d: torch.Tensor
    rotation: torch.Tensor
    head_landmarks: torch.Tensor
    rmse: torch.Tensor
    converged: torch.Tensor
    boxes: np.ndarray
    timings: dict
    image_sizes: Optional[np.ndarray] = None


def image_vertices(model: MorphableModel, shape, expr, rotation, scale, translation) -> torch.Tensor:
    """The mesh of one face, image-aligned: (N, 3) [x px, y px (down), depth px (larger = nearer)],
    from shape (Ks,), expression (Ke,), rotation (3, 3), scale (px/mm) and translation (2,) px
    (arrays or tensors; computed in the model's dtype)."""
    dt, dev = model.mean.dtype, model.mean.device
    t = lambda v: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, dtype=dt, device=dev)  # noqa: E731
    V = model.vertices(t(shape).reshape(1, -1), t(expr).reshape(1, -1))
    R, s = t(rotation).reshape(1, 3, 3), t(scale).reshape(1)
    return torch.cat([project(V, R, s, t(translation).reshape(1, 2))[0], depth(V, R, s)[0][:, None]], -1)


class Fitter:
    """The pipeline with its model, regressor and detector loaded once.

    Args:
        config: :class:`FitConfig`.
        detector: an object with ``detect(image) -> Detections`` (default: the configured
            :func:`fitting.detect.make_detector`, BlazeFace with MMOD + Haar as fallback for ``"auto"``).
    """

    def __init__(self, config: Optional[FitConfig] = None, detector=None):
        from morphable.registry import load_model
        from regressors.weights import load_regressor

        self.config = config or FitConfig()
        weights = self.config.weights
        if self.config.preset not in (None, "fast"):
            raise InputError(f"preset must be None or 'fast', got {self.config.preset!r}")
        if self.config.preset == "fast" and weights is None and not os.environ.get("MORPHABLE_WEIGHTS"):
            from regressors.weights import FAST_WEIGHTS

            if not FAST_WEIGHTS.is_file():
                raise InputError(f"the fast preset's weights are missing ({FAST_WEIGHTS}); reinstall morphable")
            weights = str(FAST_WEIGHTS)
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        mk = {k: v for k, v in (("region", self.config.region), ("landmarks", self.config.landmarks)) if v is not None}
        self.model: MorphableModel = load_model(self.config.model, **mk).to(self.config.device)
        self.regressor = load_regressor(weights, model=self.model, device=self.config.device)
        self.crop_size = int(self.regressor.cfg.crop_size)
        n_shift = self.config.shifted_crops
        self.shifted_crops = (0 if self.config.preset == "fast" else 4) if n_shift is None else int(n_shift)
        if self.shifted_crops not in (0, 2, 4):
            raise InputError(f"shifted_crops must be 0, 2 or 4, got {n_shift!r}")
        self.predictor = self._predictor()  # the regressor's predict() on onnxruntime or torch
        # The LM fits the regressor's landmark head, so it uses the landmark vertices the head was
        # trained with; outputs (landmarks, meshes) use the model's own definition.
        ids = getattr(self.regressor, "landmark_ids", None)
        if ids is None and self.model.info.landmark_definition != "upstream":
            ids = load_model(self.config.model, **{**mk, "landmarks": "upstream"}).landmarks
        self.fit_model: MorphableModel = self.model if ids is None or torch.equal(
            torch.as_tensor(ids).to(self.model.landmarks.device), self.model.landmarks) else self.model.with_landmarks(
            torch.as_tensor(ids).cpu().numpy(), definition="regressor")
        self._detector = detector
        if self.config.landmark_source not in ("head", "dlib"):
            raise InputError(f"landmark_source must be 'head' or 'dlib', got {self.config.landmark_source!r}")
        self._dlib = None
        if self.config.landmark_source == "dlib":
            from .landmarks_dlib import DlibLandmarks

            self._dlib = DlibLandmarks().load()  # fails now, naming the extra, if dlib is missing

    def _predictor(self):
        """The object whose ``predict(crops)`` runs the regressor: an onnxruntime session (FitConfig.backend)."""
        backend = self.config.backend
        if backend not in ("auto", "onnx", "torch"):
            raise InputError(f"backend must be 'auto', 'onnx' or 'torch', got {backend!r}")
        if backend == "torch" or (backend == "auto" and torch.device(self.config.device).type != "cpu"):
            return self.regressor
        from regressors.weights import onnx_runtime_for

        try:
            return onnx_runtime_for(self.regressor, threads=self.config.threads or torch.get_num_threads(),
                                    int8=self.config.int8)
        except ImportError as e:
            if backend == "onnx":
                raise InputError(f"backend='onnx' needs onnxruntime and onnx: pip install onnxruntime onnx ({e})") from None
            return self.regressor

    @property
    def detector(self):
        if self._detector is None:
            from .detect import make_detector

            self._detector = make_detector(self.config.detector, min_face=self.config.min_face)
        return self._detector

    # ----------------------------------------------------------------- core, batched
    def _regress(self, images: Sequence[np.ndarray], boxes: np.ndarray, flip: bool, shifted: int = 0):
        """Regress every face: ``(params, head)`` in image pixels. ``flip``: also the mirrored crop;
        ``shifted``: also that many crops moved by ±CROP_SHIFT (FitConfig.shifted_crops). The
        landmark head is the mean of all passes in image pixels, the parameters are the direct pass's."""
        S = self.crop_size
        B = len(boxes)
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 3)
        all_boxes = [boxes]
        for sx, sy in _SHIFT_SIGNS[:shifted]:
            d = np.rint(CROP_SHIFT * boxes[:, 2]).astype(np.int64)
            all_boxes.append(np.stack([boxes[:, 0] + sx * d, boxes[:, 1] + sy * d, boxes[:, 2]], 1))
        crops = np.stack([crop_image(im, CropBox(int(b[0]), int(b[1]), int(b[2])), S)
                          for bx in all_boxes for im, b in zip(images, bx)])
        n = len(crops)
        if flip:
            # test-time mirror: the landmark head of the mirrored crop, mapped back (x -> S-1-x and the
            # iBUG-68 mirror permutation), averaged with the direct one; one network call for all
            crops = np.concatenate([crops, crops[:, :, ::-1]])
        out = self.predictor.predict(crops)
        lms = np.asarray(out.landmarks)[:n]
        if flip:
            from morphable.landmark_definition import IBUG68_MIRROR

            lf = np.asarray(out.landmarks[n:])[:, IBUG68_MIRROR].copy()
            lf[..., 0] = (S - 1) - lf[..., 0]
            lms = 0.5 * (lms + lf)
        if len(crops) > B:
            out = RegressorOutput(**{f.name: getattr(out, f.name)[:B] for f in fields(RegressorOutput)})
        dev, dt = self.model.mean.device, self.model.mean.dtype
        t = lambda v: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, dtype=dt, device=dev)  # noqa: E731
        s_img, t_img = camera_to_image(t(out.scale), t(out.translation), boxes, S)
        head = torch.stack([to_image(t(lms[k * B:(k + 1) * B]), bx, S) for k, bx in enumerate(all_boxes)]).mean(0)
        params = FitParams(t(out.shape), t(out.expr), t(out.rotvec), s_img, t_img)
        return params, head

    def fit_crops(self, images: Sequence[np.ndarray], boxes, refine: Optional[bool] = None,
                  recrop: bool = False, targets: Optional[torch.Tensor] = None,
                  weights: Optional[torch.Tensor] = None,
                  shared_shape: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> CropFits:
        """Fit one face per (image, box).

        Args:
            images: B images (H, W, 3) uint8 RGB (the same image may repeat for several faces).
            boxes: (B, 3) int [x0, y0, side] crop boxes, image px (may leave the image).
            refine: LM refinement (default: the config's).
            recrop: re-crop on the regressed landmarks and regress again (for detector boxes).
            targets: (B, 68, 2) user landmarks (image px) to refine against instead of the
                landmark head's; ``weights`` (B, 68) their visibility.
            shared_shape: one identity across faces (a video track, photos of one person): called
                with the regressor's shape coefficients (B, Ks) before the LM, it returns the (B, Ks)
                coefficients to use instead, which the LM then keeps fixed (pose and expression
                are fitted per face), e.g. a running mean over a track's frames.
        """
        refine = self.config.refine if refine is None else refine
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 3)
        if len(images) != len(boxes):
            raise InputError(f"{len(images)} images but {len(boxes)} boxes")
        if len(boxes) == 0:
            raise InputError("empty batch: no faces to fit")
        timings = {}
        t0 = time.perf_counter()
        flip = self.config.flip_test
        # the first of two passes only places the re-crop: no mirrored crop there (FitConfig.flip_test)
        params, head = self._regress(images, boxes, flip and (not recrop or self.config.flip_first_pass),
                                     0 if recrop else self.shifted_crops)
        if recrop:
            nb = [box_from_landmarks(h) for h in head.detach().cpu().numpy()]
            boxes = np.array([[b.x0, b.y0, b.side] for b in nb], dtype=np.int64)
            params, head = self._regress(images, boxes, flip, self.shifted_crops)
        timings["regressor"] = time.perf_counter() - t0
        if shared_shape is not None:
            fixed = torch.as_tensor(shared_shape(params.shape), dtype=params.shape.dtype, device=params.shape.device)
            if fixed.shape != params.shape.shape:
                raise InputError(f"shared_shape must return {tuple(params.shape.shape)} coefficients, got {tuple(fixed.shape)}")
            params = FitParams(fixed, params.expr, params.rotvec, params.scale, params.translation)
        tgt = head if targets is None else torch.as_tensor(targets, dtype=head.dtype, device=head.device)
        B = len(boxes)
        contour = "3d"
        if refine and targets is None and self._dlib is not None:
            t0 = time.perf_counter()
            H = head.detach().cpu().numpy()
            tgt = torch.as_tensor(np.stack([self._dlib.predict_from_landmarks(im, H[i:i + 1])[0] for i, im in enumerate(images)]),
                                  dtype=head.dtype, device=head.device)
            contour = "2d"  # dlib's jaw is the 300-W silhouette
            timings["dlib"] = time.perf_counter() - t0
        if refine:
            t0 = time.perf_counter()
            head_targets = targets is None and contour == "3d"  # the head's landmarks, not dlib's or the user's
            res = fit_landmarks(self.fit_model if head_targets else self.model, tgt, weights, init=params,
                                options=FitOptions(max_iterations=self.config.iterations, shape_prior=self.config.shape_prior,
                                                   expr_prior=self.config.expr_prior, check_every=0, contour=contour,
                                                   fit_shape=shared_shape is None))
            timings["lm"] = time.perf_counter() - t0
            params, rmse, conv = res.params, res.rmse, res.converged
        else:
            conv = torch.zeros(B, dtype=torch.bool)
            rmse = None
        R = params.rotation
        X = self.model.landmark_points(params.shape, params.expr)
        lm = project(X, R, params.scale, params.translation)
        if rmse is None:
            w = torch.ones(lm.shape[:2], dtype=lm.dtype) if weights is None else torch.as_tensor(weights, dtype=lm.dtype)
            err = (lm - tgt).norm(dim=-1)
            rmse = torch.sqrt((w * err * err).sum(-1) / w.sum(-1).clamp_min(1e-12))
        lm3d = torch.cat([lm, depth(X, R, params.scale)[..., None]], -1)
        sizes = np.array([np.shape(im)[:2] for im in images], dtype=np.int64)
        return CropFits(params, lm, lm3d, R, head, rmse, conv, boxes, timings, image_sizes=sizes)

    def faces(self, fits: CropFits, i: int) -> FaceFit:
        """The :class:`FaceFit` of face ``i`` of a batch (builds the full mesh)."""
        p = fits.params.index(slice(i, i + 1))
        R = fits.rotation[i:i + 1]
        Vimg = image_vertices(self.model, p.shape[0], p.expr[0], R[0], p.scale[0], p.translation[0])
        ang = torch.rad2deg(rotmat_to_angles(R[0].double())).numpy()  # [pitch, yaw, roll]
        b = fits.boxes[i]
        return FaceFit(
            vertices_img=Vimg.detach().cpu().numpy(),
            triangles=self.model.triangles.cpu().numpy(),
            landmarks=fits.landmarks[i].detach().cpu().numpy(),
            rotation=R[0].detach().cpu().numpy(),
            angles_deg=np.array([ang[1], ang[0], ang[2]]),
            scale=float(p.scale[0]), translation=p.translation[0].detach().cpu().numpy(),
            rmse=float(fits.rmse[i]), converged=bool(fits.converged[i]),
            box=np.array([b[0], b[1], b[0] + b[2], b[1] + b[2]], dtype=np.float64),
            shape=p.shape[0].detach().cpu().numpy(), expr=p.expr[0].detach().cpu().numpy(),
            model_name=self.model.name, uv=self.uv, mirror=self.mirror,
            image_size=None if fits.image_sizes is None else tuple(int(v) for v in fits.image_sizes[i]))

    @property
    def uv(self) -> np.ndarray:
        """(N, 2) float64 the model's texture coordinates ((0, 2) without), one array for every face."""
        if not hasattr(self, "_uv"):
            self._uv = self.model.uv.detach().cpu().numpy().astype(np.float64).reshape(-1, 2)
            self._uv.setflags(write=False)  # shared by every FaceFit
        return self._uv

    @property
    def mirror(self) -> Optional[np.ndarray]:
        """(N,) each vertex's mirror vertex on the mean face, for the texture's hidden side (computed
        once, a k-d tree query; None for a model without UVs)."""
        if not hasattr(self, "_mirror"):
            from morphable.landmark_definition import mirror_vertices

            self._mirror = mirror_vertices(self.model.mean.detach().cpu().float()).numpy() if len(self.uv) else None
            if self._mirror is not None:
                self._mirror.setflags(write=False)
        return self._mirror

    # ----------------------------------------------------------------- user API
    def fit_all(self, image, boxes=None, landmarks=None, bgr: bool = False) -> list[FaceFit]:
        """Every face in one image (largest first).

        Args:
            image: path, NumPy array (H, W, 3) uint8 RGB (BGR with ``bgr=True``) or PIL image.
            boxes: optional (K, 4) [x0, y0, x1, y1] face boxes (skips detection).
            landmarks: optional (K, 68, 2) landmarks, image px (skips detection; the LM refines
                against them; NaN = absent).
        """
        return self.fit_batch([image], [boxes] if boxes is not None else None,
                              [landmarks] if landmarks is not None else None, bgr=bgr)[0]

    def fit_batch(self, images, boxes=None, landmarks=None, bgr: bool = False, same_person: bool = False) -> list[list[FaceFit]]:
        """Many images: detect every face, then regress and refine all faces in one batched pass.

        ``same_person=True``: every face is the same person (photos of one person): one identity,
        the mean of the regressor's shape coefficients over all faces, held fixed by the LM, which
        fits pose and expression per face."""
        from .images import load_image

        imgs = [load_image(im, bgr=bgr) for im in images]
        all_img, all_box, all_tgt, owner = [], [], [], []
        recrop = True
        for k, im in enumerate(imgs):
            if landmarks is not None and landmarks[k] is not None:
                L = np.asarray(landmarks[k], dtype=np.float64).reshape(-1, 68, 2)
                cbs = [box_from_landmarks(l) for l in L]
                tg = list(L)
                recrop = False
            else:
                if boxes is not None and boxes[k] is not None:
                    from .detect import BoxesDetector

                    det = BoxesDetector(boxes[k]).detect(im)
                else:
                    det = self.detector.detect(im)
                if self.config.max_faces:
                    det = det[: self.config.max_faces]
                cbs = det.crop_boxes()
                tg = [None] * len(cbs)
            for cb, t in zip(cbs, tg):
                all_img.append(im)
                all_box.append([cb.x0, cb.y0, cb.side])
                all_tgt.append(t)
                owner.append(k)
        out: list[list[FaceFit]] = [[] for _ in imgs]
        if not all_box:
            return out
        targets = weights = None
        if any(t is not None for t in all_tgt):
            T = np.stack([t if t is not None else np.full((68, 2), np.nan) for t in all_tgt])
            weights = torch.as_tensor(np.isfinite(T).all(-1).astype(np.float32))
            targets = torch.as_tensor(np.nan_to_num(T), dtype=torch.float32)
        mean_shape = (lambda sh: sh.mean(0, keepdim=True).expand_as(sh)) if same_person else None  # noqa: E731
        fits = self.fit_crops(all_img, np.array(all_box), recrop=recrop and self.config.recrop,
                              targets=targets, weights=weights, shared_shape=mean_shape)
        for i, k in enumerate(owner):
            out[k].append(self.faces(fits, i))
        return out

    def fit(self, image, bgr: bool = False):
        """The largest face: ``(trimesh.Trimesh, Pose)``. Raises InputError if no face is found."""
        faces = self.fit_all(image, bgr=bgr)
        if not faces:
            raise InputError("no face found in the image; pass boxes= or landmarks= if the detector misses it")
        return faces[0].mesh(), faces[0].pose


_DEFAULT: dict = {}


def _fitter(config: Optional[FitConfig] = None, **kw) -> Fitter:
    cfg = config or FitConfig(**kw)
    key = repr(cfg)
    if key not in _DEFAULT:
        _DEFAULT.clear()
        _DEFAULT[key] = Fitter(cfg)
    return _DEFAULT[key]


def fit(image, config: Optional[FitConfig] = None, bgr: bool = False, **kw):
    """``mesh, pose = fit(image)``: the largest face of a photo as a ``trimesh.Trimesh`` (image-aligned:
    x, y px, y down, z px) and a :class:`Pose`. ``kw`` are :class:`FitConfig` fields."""
    return _fitter(config, **kw).fit(image, bgr=bgr)


def fit_all(image, config: Optional[FitConfig] = None, bgr: bool = False, boxes=None, landmarks=None, **kw) -> list[FaceFit]:
    """Every face of one image as :class:`FaceFit` records (largest first)."""
    return _fitter(config, **kw).fit_all(image, boxes=boxes, landmarks=landmarks, bgr=bgr)


def fit_batch(images, config: Optional[FitConfig] = None, bgr: bool = False, same_person: bool = False,
              **kw) -> list[list[FaceFit]]:
    """Many images in one batched pass: a list (per image) of :class:`FaceFit` lists
    (``same_person``: one identity for all faces, :meth:`Fitter.fit_batch`)."""
    return _fitter(config, **kw).fit_batch(images, bgr=bgr, same_person=same_person)


def fit_crops(images: Union[Sequence[np.ndarray], np.ndarray], boxes, refine: bool = True,
              config: Optional[FitConfig] = None, **kw) -> CropFits:
    """Benchmark entry point: one face per (image, standard crop box [x0, y0, side])."""
    f = _fitter(config, **kw)
    return f.fit_crops(list(images), boxes, refine=refine)
