"""fitting.blendshapes: ICT-FaceKit -> ARKit mapping, timecodes and the Live Link Face style CSV."""
import csv
import math
from pathlib import Path

import numpy as np
import pytest

import morphable
from fitting.blendshapes import (ARKIT_NAMES, arkit_mapping, parse_timecode, read_arkit_csv, timecode, to_arkit,
                                 write_arkit_csv)
from morphable.errors import InputError

ICT_NAMES = ['browDown_L', 'browDown_R', 'browInnerUp_L', 'browInnerUp_R', 'browOuterUp_L', 'browOuterUp_R',
             'cheekPuff_L', 'cheekPuff_R', 'cheekSquint_L', 'cheekSquint_R', 'eyeBlink_L', 'eyeBlink_R',
             'eyeLookDown_L', 'eyeLookDown_R', 'eyeLookIn_L', 'eyeLookIn_R', 'eyeLookOut_L', 'eyeLookOut_R',
             'eyeLookUp_L', 'eyeLookUp_R', 'eyeSquint_L', 'eyeSquint_R', 'eyeWide_L', 'eyeWide_R', 'jawForward',
             'jawLeft', 'jawOpen', 'jawRight', 'mouthClose', 'mouthDimple_L', 'mouthDimple_R', 'mouthFrown_L',
             'mouthFrown_R', 'mouthFunnel', 'mouthLeft', 'mouthLowerDown_L', 'mouthLowerDown_R', 'mouthPress_L',
             'mouthPress_R', 'mouthPucker', 'mouthRight', 'mouthRollLower', 'mouthRollUpper', 'mouthShrugLower',
             'mouthShrugUpper', 'mouthSmile_L', 'mouthSmile_R', 'mouthStretch_L', 'mouthStretch_R',
             'mouthUpperUp_L', 'mouthUpperUp_R', 'noseSneer_L', 'noseSneer_R']


def _row(name):
    return ARKIT_NAMES.index(name)


def _col(name):
    return ICT_NAMES.index(name)


def test_arkit_names():
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    assert ARKIT_NAMES[:2] == ("EyeBlinkLeft", "EyeLookDownLeft") and ARKIT_NAMES[-1] == "TongueOut"
    # Live Link Face CSV order: JawRight before JawLeft, MouthRight before MouthLeft
    assert ARKIT_NAMES[14:18] == ("JawForward", "JawRight", "JawLeft", "JawOpen")
    assert ARKIT_NAMES[21:23] == ("MouthRight", "MouthLeft")


def test_ict_mapping():
    M = arkit_mapping(ICT_NAMES)
    assert M.shape == (52, 53)
    assert M[_row("EyeBlinkLeft"), _col("eyeBlink_L")] == 1.0 and M[_row("EyeBlinkLeft")].sum() == 1.0
    assert M[_row("JawRight"), _col("jawRight")] == 1.0 and M[_row("JawRight"), _col("jawLeft")] == 0.0
    assert M[_row("MouthSmileRight"), _col("mouthSmile_R")] == 1.0
    for shape in ("browInnerUp", "cheekPuff"):
        r = M[_row(shape[0].upper() + shape[1:])]
        assert r[_col(shape + "_L")] == 0.5 and r[_col(shape + "_R")] == 0.5 and r.sum() == 1.0
    assert not M[_row("TongueOut")].any()
    assert (M != 0).any(0).all()  # every ICT component is used
    assert ((M != 0).sum(1) <= 2).all() and ((M != 0).sum(0) == 1).all()
    # arkit = M @ w: a blink of the left eye and half a smile
    w = np.zeros(53)
    w[_col("eyeBlink_L")], w[_col("mouthSmile_R")], w[_col("cheekPuff_L")] = 1.0, 0.5, 0.8
    a = M @ w
    assert a[_row("EyeBlinkLeft")] == 1.0 and a[_row("MouthSmileRight")] == 0.5 and a[_row("CheekPuff")] == 0.4
    assert np.count_nonzero(a) == 3


def test_packaged_model_names_map():
    from morphable.formats.native import load_native

    model = load_native(Path(morphable.__file__).parent / "data" / "ict-facekit-face.h5")
    assert list(model.info.expression_names) == ICT_NAMES
    assert (arkit_mapping(model.info.expression_names) != 0).any(0).all()


def test_not_a_blendshape_model_raises():
    with pytest.raises(InputError, match="not an ARKit-style blendshape model"):
        arkit_mapping([f"exp{k:02d}" for k in range(100)])
    with pytest.raises(InputError, match="blendshape"):
        arkit_mapping([])
    with pytest.raises(InputError, match="both map"):
        arkit_mapping(ICT_NAMES + ["EyeBlinkLeft"])


def test_timecode_known_values():
    assert timecode(0.0, 25) == "00:00:00:00.000"
    assert timecode(61.5, 25) == "00:01:01:12.500"  # 0.5 s = 12.5 frames
    assert timecode(3723.04, 25) == "01:02:03:01.000"
    assert timecode(0.12, 25) == "00:00:00:03.000"  # 2.9999999... frames rounds to frame 3
    assert timecode(59.9999999, 30) == "00:01:00:00.000"  # rounding carries into the minute
    assert timecode(1 / 60, 30) == "00:00:00:00.500"
    assert timecode(100 * 3600 + 0.5, 60) == "100:00:00:30.000"
    for t, fps in ((61.5, 25), (0.0123, 60), (3723.37, 29.97)):
        assert parse_timecode(timecode(t, fps), fps) == pytest.approx(t, abs=0.5e-3 / fps + 1e-9)
    with pytest.raises(InputError, match="fps"):
        timecode(1.0, 0)
    with pytest.raises(InputError, match=">= 0"):
        timecode(-1.0, 25)


def test_csv_round_trip_with_missing_face(tmp_path):
    rng = np.random.default_rng(0)
    T = 6
    times = np.arange(T) / 30.0
    W = rng.uniform(-0.2, 1.2, (T, 53))  # out of range on purpose: clipped to [0, 1]
    W[3] = np.nan  # no face in frame 3
    ypr = rng.uniform(-40, 40, (T, 3))
    ypr[3] = np.nan
    out = write_arkit_csv(tmp_path / "sub" / "take.csv", times, W, ICT_NAMES, ypr, fps=30.0)
    assert out == tmp_path / "sub" / "take.csv" and not [p for p in out.parent.iterdir() if p != out]
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["Timecode", "BlendShapeCount", *ARKIT_NAMES, "HeadYaw", "HeadPitch", "HeadRoll"]
    assert len(rows) == T + 1 and all(len(r) == 2 + 52 + 3 for r in rows)
    assert rows[2][:2] == ["00:00:00:01.000", "55"]
    assert rows[4][2:] == [""] * 55  # the missing face: empty fields, not invented numbers
    assert rows[2][2 + _row("TongueOut")] == "0.000000"

    back = read_arkit_csv(out, fps=30.0)
    assert back["timecodes"][1] == "00:00:00:01.000" and back["names"] == ARKIT_NAMES
    assert np.allclose(back["times"], times, atol=1e-9)
    expect = np.clip(W @ arkit_mapping(ICT_NAMES).T, 0, 1)
    ok = np.arange(T) != 3
    assert np.isnan(back["weights"][3]).all() and np.isnan(back["head_ypr_deg"][3]).all()
    assert np.abs(back["weights"][ok] - expect[ok]).max() <= 0.5e-6 + 1e-12
    assert np.abs(back["head_ypr_deg"][ok] - ypr[ok]).max() <= 0.5e-4 + 1e-12
    assert back["weights"][ok].min() >= 0.0 and back["weights"][ok].max() <= 1.0
    assert (back["weights"][ok] == 0).any() and (back["weights"][ok] == 1).any()  # the clipping did happen


def test_to_arkit_and_bad_inputs(tmp_path):
    w = np.zeros((2, 53))
    w[1, _col("browInnerUp_L")] = np.nan
    a = to_arkit(w, ICT_NAMES)
    assert not a[0].any() and np.isnan(a[1]).all()  # a frame with a NaN is a frame without a face
    t = np.arange(2) / 25.0
    with pytest.raises(InputError, match="weights"):
        write_arkit_csv(tmp_path / "a.csv", t, np.zeros((2, 52)), ICT_NAMES, np.zeros((2, 3)), 25.0)
    with pytest.raises(InputError, match="increasing"):
        write_arkit_csv(tmp_path / "a.csv", t[::-1], w, ICT_NAMES, np.zeros((2, 3)), 25.0)
    with pytest.raises(InputError, match="head_ypr_deg"):
        write_arkit_csv(tmp_path / "a.csv", t, w, ICT_NAMES, np.zeros((2, 2)), 25.0)
    assert not (tmp_path / "a.csv").exists()
    (tmp_path / "b.csv").write_text("frame,jaw\n0,1\n")
    with pytest.raises(InputError, match="Timecode"):
        read_arkit_csv(tmp_path / "b.csv")
    # head angles are optional: empty fields
    p = write_arkit_csv(tmp_path / "c.csv", t, np.zeros((2, 53)), ICT_NAMES, None, 25.0)
    assert np.isnan(read_arkit_csv(p)["head_ypr_deg"]).all() and read_arkit_csv(p)["times"] is None
    assert math.isclose(parse_timecode("00:00:01:05", 25), 1.2)
