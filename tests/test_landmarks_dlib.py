"""fitting.landmarks_dlib: dlib's 68-point predictor (optional extra ``dlib``) on real faces.

The 300-W ``.pts`` files of ``faces68`` are 1-based (MATLAB pixel convention; menpo's importer
subtracts 1 for the same reason): drawn on the unscaled AFW crops the shifted points sit on the
eyelid and lip edges, and the predictor's NME is lower against ``pts - 1`` than against ``pts``.
"""
import numpy as np
import pytest

from morphable.errors import InputError, MorphableError

from fitting.landmarks_dlib import DlibLandmarks, box_from_landmarks, dlib_available

needs_dlib = pytest.mark.skipif(not dlib_available(), reason='dlib extra not installed: pip install -e ".[dlib]"')


def _pts(path):
    body = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(body, float).reshape(-1, 2)


def _nme(pred, gt):
    """Mean point error / sqrt(GT bbox w * h) * 100 (the AFLW2000-3D normalisation)."""
    wh = gt.max(0) - gt.min(0)
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.sqrt(wh.prod()) * 100.0)


def test_box_from_landmarks_geometry():
    P = np.zeros((68, 2))
    P[17:] = np.stack(np.meshgrid(np.linspace(10, 50, 51), [0.0]), -1).reshape(-1, 2)[:51]
    P[17:, 1] = np.linspace(20, 40, 51)
    P[:17] = [1000.0, 1000.0]  # the jaw is ignored
    b = box_from_landmarks(P)
    side = 1.34 * 40
    np.testing.assert_allclose(b, [30 - side / 2, 30 - side / 2, 30 + side / 2, 30 + side / 2])
    assert box_from_landmarks(np.stack([P, P + 5])).shape == (2, 4)
    with pytest.raises(InputError):
        box_from_landmarks(np.full((68, 2), np.nan))


def test_missing_model_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setenv("MORPHABLE_DLIB_PREDICTOR", str(tmp_path / "absent.dat"))
    with pytest.raises(MorphableError):
        DlibLandmarks().load()
    with pytest.raises(MorphableError, match=r'pip install -e "\.\[dlib\]"'):
        DlibLandmarks(model_path=str(tmp_path / "absent.dat")).load()


@needs_dlib
def test_predict_rejects_bad_input():
    lm = DlibLandmarks()
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InputError, match="uint8 RGB"):
        lm.predict(img[..., 0], [[0, 0, 32, 32]])
    with pytest.raises(InputError, match="uint8 RGB"):
        lm.predict(img.astype(np.float32), [[0, 0, 32, 32]])
    for bad in ([[0, 0, 32]], [[0, 0, np.nan, 32]], [[10, 10, 5, 30]]):
        with pytest.raises(InputError):
            lm.predict(img, bad)
    assert lm.predict(img, np.zeros((0, 4))).shape == (0, 68, 2)
    with pytest.raises(InputError):
        lm.predict_from_landmarks(img, np.zeros((1, 68, 2)) + 20, passes=0)


@needs_dlib
def test_predictor_nme_on_faces68(shared):
    """21 photos (frontal to near-profile), face rectangle from the annotations (box_from_landmarks).
    Measured here: mean NME 1.82 %, median 1.49 %, worst 4.16 % (einstein) against pts - 1;
    1.95 % mean against the raw pts; a second pass (predict_from_landmarks(passes=2)) 1.72 %.
    With dlib's own HOG boxes (20/21 found) the mean is 1.55 %."""
    from fitting.images import load_image

    files = sorted((shared / "data/faces68").glob("*.pts"))
    assert len(files) == 21
    lm = DlibLandmarks()
    e0, e1 = [], []
    for f in files:
        img = load_image(next(p for p in (f.with_suffix(".jpg"), f.with_suffix(".png")) if p.exists()))
        raw = _pts(f)
        gt = raw - 1.0  # 1-based -> 0-based
        pred = lm.predict(img, box_from_landmarks(gt)[None])
        assert pred.shape == (1, 68, 2) and np.isfinite(pred).all()
        e0.append(_nme(pred[0], gt))
        e1.append(_nme(pred[0], raw))
        two = lm.predict_from_landmarks(img, gt[None], passes=2)
        assert _nme(two[0], gt) < 5.0
    e0 = np.array(e0)
    assert e0.mean() < 2.3 and np.median(e0) < 1.8 and e0.max() < 5.5, np.round(e0, 2)
    assert e0.mean() < np.mean(e1)  # the 1-based reading fits better


@needs_dlib
def test_several_faces_in_one_image(shared):
    """Boxes are independent: predicting two boxes at once equals predicting them one by one."""
    from fitting.images import load_image

    f = shared / "data/faces68/300w_helen_3166166183_1.pts"
    img = load_image(f.with_suffix(".jpg"))
    gt = _pts(f) - 1.0
    b = box_from_landmarks(gt)
    both = DlibLandmarks().predict(img, np.stack([b, b + [3, -2, 3, -2]]))
    one = DlibLandmarks().predict(img, b[None])
    np.testing.assert_array_equal(both[:1], one)
    assert _nme(both[1], gt) < 3.0


def test_pipeline_rejects_unknown_landmark_source(shared):
    from fitting.pipeline import FitConfig, Fitter

    with pytest.raises(InputError, match="landmark_source"):
        Fitter(FitConfig(landmark_source="mediapipe"))


@needs_dlib
def test_pipeline_dlib_targets(shared):
    """FitConfig(landmark_source="dlib"): the LM fits dlib's points (timed as "dlib"), the output
    landmarks stay the model's landmark vertices; two frontal photos, standard crop boxes.
    Measured with the shipped weights: RMSE to dlib's points 1.1-1.2 % of face size, NME of the
    output landmarks 1.7-1.8 % (3.3-3.6 % with landmark_source="head")."""
    from fitting.images import load_image
    from fitting.pipeline import FitConfig, Fitter
    from morphable.crop import box_from_landmarks as crop_box

    names = ["300w_helen_3166166183_1", "300w_helen_3255054809_1"]
    imgs, gts, boxes = [], [], []
    for n in names:
        f = shared / "data/faces68" / f"{n}.pts"
        imgs.append(load_image(f.with_suffix(".jpg")))
        gts.append(_pts(f) - 1.0)
        b = crop_box(gts[-1])
        boxes.append([b.x0, b.y0, b.side])
    fitter = Fitter(FitConfig(landmark_source="dlib"))
    fits = fitter.fit_crops(imgs, np.array(boxes))
    assert "dlib" in fits.timings and fits.landmarks.shape == (2, 68, 2)
    lm = fits.landmarks.detach().numpy()
    assert np.isfinite(lm).all()
    for i, gt in enumerate(gts):
        size = np.sqrt((gt.max(0) - gt.min(0)).prod())
        assert float(fits.rmse[i]) / size * 100 < 3.0  # close to dlib's points
        assert _nme(lm[i], gt) < 3.0  # frontal: fixed vertices near the 2D annotation
    # without refinement dlib is not run
    assert "dlib" not in fitter.fit_crops(imgs[:1], np.array(boxes[:1]), refine=False).timings
