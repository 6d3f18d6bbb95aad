"""Video: tracking, gaps, outputs, bad files, resume; clips written by the tests plus the obama clip."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fitting
from fitting.images import load_image
from morphable.errors import InputError

EXAMPLE = Path(fitting.__file__).parent / "examples" / "astronaut.jpg"


@pytest.fixture(scope="module")
def fitter():
    from fitting.pipeline import Fitter

    return Fitter()


def _frames(n=12, gap=(5, 7)):
    """A 320 x 240 clip: the example face sliding right 2 px a frame, grey frames at ``gap``."""
    face = load_image(EXAMPLE)
    face = cv2.resize(face, (200, 200))
    out = []
    for i in range(n):
        f = np.full((240, 320, 3), 90, np.uint8)
        if not gap[0] <= i < gap[1]:
            x = 20 + 2 * i
            f[20:220, x:x + 200] = face
        out.append(f)
    return out


def _write_clip(path: Path, frames, fps=10.0) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frames[0].shape[1], frames[0].shape[0]))
    for f in frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    return path


def test_track_keeps_one_id_records_the_gap_and_invents_no_face(fitter):
    from fitting.video import track

    out = list(track(_frames(), fitter, fps=10.0))
    assert [fr.index for fr in out] == list(range(12))
    assert all(len(fr.faces) == 0 for fr in out[5:7])  # the grey frames: no face
    ids = {f.track for fr in out for f in fr.faces}
    assert all(len(fr.faces) == 1 for fr in out[:5] + out[7:])
    assert len(ids) <= 2  # a face re-found after a gap may start a new track, never more
    first = [fr.faces[0] for fr in out[:5]]
    assert len({f.track for f in first}) == 1
    assert all(not f.detected for f in first[1:])  # cropped from the previous frame, no detector
    # the face moves right: so do its landmarks, by about 2 px a frame
    dx = np.diff([f.landmarks_raw[:, 0].mean() for f in first])
    assert np.all(np.abs(dx - 2.0) < 1.5), dx


def test_joint_identity_is_one_shape_per_track_and_smoothing_off_keeps_raw(fitter):
    from fitting.video import Tracker

    rng = np.random.default_rng(0)  # fresh sensor noise per frame: the per-frame fits of the shape wobble
    frames = [np.clip(f + rng.normal(0, 12, f.shape), 0, 255).astype(np.uint8) for f in _frames(10, gap=(99, 99))]
    joint = Tracker(fitter, smoothing=0.0)
    free = Tracker(fitter, smoothing=0.0, joint_identity=False)
    J = [joint.step(f, i / 10).faces[0] for i, f in enumerate(frames)]
    Fr = [free.step(f, i / 10).faces[0] for i, f in enumerate(frames)]
    for f in J:
        np.testing.assert_array_equal(f.landmarks, f.landmarks_raw)
    # the running mean over the frames so far moves by about 1/t of a frame's change: far less
    # than the per-frame fits over the later frames
    dj = np.abs(np.diff([f.shape for f in J[4:]], axis=0)).mean()
    df = np.abs(np.diff([f.shape for f in Fr[4:]], axis=0)).mean()
    assert dj < 0.5 * df, (dj, df)


def test_fit_batch_same_person_shares_one_identity(fitter):
    face = load_image(EXAMPLE)
    res = fitter.fit_batch([face, np.ascontiguousarray(face[:, ::-1])], same_person=True)
    a, b = res[0][0], res[1][0]
    np.testing.assert_allclose(a.shape, b.shape, atol=1e-5)
    free = fitter.fit_batch([face, np.ascontiguousarray(face[:, ::-1])])
    assert np.abs(free[0][0].shape - free[1][0].shape).max() > 1e-3  # without it, two shapes


def test_fit_video_writes_every_output_and_resumes_after_an_interrupt(fitter, tmp_path, monkeypatch):
    from fitting import video
    from fitting.blendshapes import read_arkit_csv
    from fitting.video_outputs import fit_video, read_jsonl

    clip = _write_clip(tmp_path / "clip.mp4", _frames())
    out = tmp_path / "out"
    r = fit_video(clip, out, fitter, progress=False, meshes=True)
    recs = read_jsonl(out / "clip.jsonl")
    assert r["frames"] == len(recs) == 12 and [x["frame"] for x in recs] == list(range(12))
    assert [len(x["faces"]) for x in recs[5:7]] == [0, 0]
    np.testing.assert_allclose([x["time"] for x in recs], np.arange(12) / 10.0, atol=1e-3)  # container times
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    n = 0
    while cap.grab():
        n += 1
    assert n == 12
    tid = recs[0]["faces"][0]["track"]
    csv = read_arkit_csv(out / f"clip_track{tid}_arkit.csv")
    assert csv["weights"].shape == (12, 52) and np.isnan(csv["weights"][5:7]).all() and np.isfinite(csv["weights"][:5]).all()
    z = np.load(out / f"clip_track{tid}.npz")
    assert z["expr"].shape[1] == fitter.model.n_expr and len(z["frames"]) == len(z["expr"])
    assert (out / f"clip_00000_track{tid}.obj").is_file()
    first = (out / "clip.jsonl").read_text().splitlines()

    # interrupted after 4 frames: those lines are kept; --resume finishes the clip
    out2 = tmp_path / "out2"
    real_step = video.Tracker.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(video.Tracker, "step", step)
    with pytest.raises(KeyboardInterrupt):
        fit_video(clip, out2, fitter, progress=False)
    assert len(read_jsonl(out2 / "clip.jsonl")) == 4
    monkeypatch.setattr(video.Tracker, "step", real_step)
    r2 = fit_video(clip, out2, fitter, progress=False, resume=True)
    lines = (out2 / "clip.jsonl").read_text().splitlines()
    assert r2["frames"] == 12 and r2["frames_this_run"] == 8 and len(lines) == 12
    assert lines[:4] == first[:4]  # the finished frames are not redone
    assert [json.loads(x)["frame"] for x in lines] == list(range(12))


def test_bad_videos_get_one_clear_error(tmp_path):
    from fitting.video import read_video, video_info

    with pytest.raises(InputError, match="not found"):
        video_info(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 not a video " * 100)
    with pytest.raises(InputError, match="not a readable video|no decodable frames"):
        list(read_video(junk))
    empty = tmp_path / "empty.mp4"
    w = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
    w.release()  # zero frames
    with pytest.raises(InputError):
        list(read_video(empty))
    clip = _write_clip(tmp_path / "clip.mp4", _frames(10))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])  # truncated: an error or fewer frames, no crash
    try:
        n = sum(1 for _ in read_video(cut))
        assert 0 < n <= 10
    except InputError as e:
        assert "cut.mp4" in str(e)


def test_cli_fits_a_video(tmp_path):
    from morphable.cli import main

    clip = _write_clip(tmp_path / "c.mp4", _frames(6, gap=(99, 99)))
    rc = main(["fit", str(clip), "--out", str(tmp_path / "o"), "--no-smooth"])
    assert rc == 0
    recs = [json.loads(x) for x in (tmp_path / "o" / "c.jsonl").read_text().splitlines()]
    assert len(recs) == 6 and all(len(r["faces"]) == 1 for r in recs)
    f = recs[-1]["faces"][0]
    assert f["landmarks"] == f["landmarks_raw"]  # --no-smooth


def test_obama_clip_all_frames_one_track(fitter, shared, tmp_path):
    from fitting.video_outputs import fit_video, read_jsonl

    clip = shared / "data/video/obama.mp4"
    r = fit_video(clip, tmp_path, fitter, progress=False)
    recs = read_jsonl(tmp_path / "obama.jsonl")
    assert len(recs) == 158 and r["frames_with_face"] == 158 and r["tracks"] == [0]
    times = np.array([x["time"] for x in recs])
    assert np.all(np.diff(times) > 0) and abs(times[-1] - 6.32) < 0.1


def test_two_faces_get_two_stable_tracks(fitter):
    """Two faces side by side: two tracks from the first frame, each keeping its id and its side."""
    from fitting.video import track

    face = cv2.resize(load_image(EXAMPLE), (180, 180))
    frames = []
    for i in range(6):
        f = np.full((240, 480, 3), 90, np.uint8)
        f[30:210, 20 + i:200 + i] = face
        f[30:210, 280 - i:460 - i] = face[:, ::-1]
        frames.append(f)
    out = list(track(frames, fitter, fps=10.0))
    assert all(len(fr.faces) == 2 for fr in out)
    side = {}
    for fr in out:
        for f in fr.faces:
            x = float(f.landmarks_raw[:, 0].mean())
            side.setdefault(f.track, set()).add(x < 240)
    assert len(side) == 2 and all(len(v) == 1 for v in side.values())  # ids never swap sides
