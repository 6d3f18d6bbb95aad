"""Fit every face in a folder of photos with Ray Data: one batched ``fit`` per block of images.

    pip install -e ".[ray]"
    python docs/examples/ray_fit.py ../shared/data/faces68 --out build/ray_out --actors 2

Each Ray actor builds one :class:`fitting.pipeline.Fitter` (model, regressor and detector loaded
once) and fits a whole batch of images per call with ``Fitter.fit_batch``: the faces of all the
images in the batch go through the regressor and the Levenberg-Marquardt solver together. Every
actor uses one torch thread (``num_cpus=1``; on small CPUs batched linear algebra is much slower
with two threads than with one, so scale with actors, not threads).

Output: one row per face (image path, face number, yaw/pitch/roll in degrees, landmark RMSE in
pixels, convergence), printed as a table and written to ``<out>/faces.jsonl``; with ``--out`` the
three files of ``morphable fit`` (OBJ, JSON, overlay PNG) are written for every face too. An
unreadable image or one without a face gives a row with its status instead of stopping the job.

Local Ray by default (``ray.init(num_cpus=--actors)``); ``--address auto`` joins a running
cluster. On a cluster, ``--out`` must be a path every node can write (a shared file system), and
every node needs the package installed and the model reachable (``MORPHABLE_ICT_DIR``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

COLUMNS = ("path", "face", "status", "yaw", "pitch", "roll", "rmse_px", "converged", "error")


# --8<-- [start:fitbatch]
class FitBatch:
    """Ray Data callable class: a batch ``{"path": array of str}`` -> one row per face."""

    def __init__(self, weights: str | None = None, out: str | None = None, threads: int = 1):
        from fitting.pipeline import FitConfig, Fitter

        self.fitter = Fitter(FitConfig(weights=weights, threads=threads))
        self.out = Path(out) if out else None

    def _write(self, image, path: str, k: int, face) -> None:
        from fitting.outputs import FaceRecord, write_face

        rec = FaceRecord(image=image, stem=Path(path).stem, index=k, vertices_img=face.vertices_img,
                         triangles=face.triangles, landmarks=face.landmarks, rotation=face.rotation,
                         angles_deg=face.angles_deg, scale=face.scale, translation=face.translation,
                         rmse=face.rmse, converged=face.converged, box=face.box, model_name=face.model_name,
                         extra={"image": path})
        write_face(rec, self.out)

    def __call__(self, batch: dict) -> dict:
        from fitting.images import load_image
        from morphable.errors import InputError

        rows = {c: [] for c in COLUMNS}

        def add(path, face=-1, status="ok", pose=(np.nan,) * 3, rmse=np.nan, conv=False, error=""):
            for c, v in zip(COLUMNS, (path, face, status, *pose, rmse, conv, error)):
                rows[c].append(v)

        paths, images = [], []
        for p in (str(x) for x in batch["path"]):
            try:
                images.append(load_image(p))
                paths.append(p)
            except InputError as e:  # one bad file must not stop the batch
                add(p, status="unreadable", error=str(e))
        if images:
            for path, image, faces in zip(paths, images, self.fitter.fit_batch(images)):
                if not faces:
                    add(path, status="no face")
                for k, face in enumerate(faces):
                    if self.out is not None:
                        self._write(image, path, k, face)
                    add(path, k, "ok", tuple(float(a) for a in face.angles_deg), float(face.rmse), bool(face.converged))
        return {c: np.asarray(v) for c, v in rows.items()}
# --8<-- [end:fitbatch]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="image files and/or folders")
    ap.add_argument("--out", default=None, help="folder for faces.jsonl and the per-face files")
    ap.add_argument("--actors", type=int, default=2, help="Ray actors, one CPU each (default 2)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per fit_batch call (default 8)")
    ap.add_argument("--weights", default=None, help="regressor weights (default: the bundled ones)")
    ap.add_argument("--address", default=None, help="Ray cluster address ('auto' = running cluster); default: local")
    ap.add_argument("--log", default=None, help="also write what is printed to this file")
    a = ap.parse_args(argv)

    import ray

    from fitting.images import list_images

    paths = [str(p) for p in list_images(a.inputs)]
    if not paths:
        raise SystemExit("no images found in " + " ".join(a.inputs))
    if a.address:
        ray.init(address=a.address)
    else:
        ray.init(num_cpus=a.actors, include_dashboard=False, object_store_memory=256 * 1024 ** 2,
                 logging_level="ERROR", log_to_driver=False)
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # keep the output to the table below
    ray.data.DataContext.get_current().enable_progress_bars = False
    t0 = time.perf_counter()
    # --8<-- [start:driver]
    ds = ray.data.from_items([{"path": p} for p in paths])
    ds = ds.map_batches(FitBatch, fn_constructor_kwargs={"weights": a.weights, "out": a.out},
                        batch_size=a.batch_size, concurrency=a.actors, num_cpus=1)
    rows = sorted(ds.take_all(), key=lambda r: (r["path"], int(r["face"])))
    # --8<-- [end:driver]
    dt = time.perf_counter() - t0
    ray.shutdown()

    ok = [r for r in rows if r["status"] == "ok"]
    lines = [f"ray {ray.__version__}: {len(paths)} images -> {len(ok)} faces fitted by {a.actors} actor(s), "
             f"batch {a.batch_size}, {dt:.1f} s wall (including actor start-up)",
             f"{'image':<34} {'face':>4} {'yaw':>7} {'pitch':>7} {'roll':>7} {'rmse px':>8}  status"]
    for r in rows:
        lines.append(f"{Path(str(r['path'])).name:<34} {int(r['face']):>4} {float(r['yaw']):>7.1f} "
                     f"{float(r['pitch']):>7.1f} {float(r['roll']):>7.1f} {float(r['rmse_px']):>8.2f}  {r['status']}")
    text = "\n".join(lines)
    print(text)
    if a.log:
        Path(a.log).write_text(text + "\n")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "faces.jsonl", "w") as fh:
            for r in rows:
                d = {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                d = {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}  # NaN -> null
                fh.write(json.dumps(d) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
