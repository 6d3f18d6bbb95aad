r"""Robustness report (issue 8): ``python -m benchmarks.robustness [--quick]``.

Feeds the corruption corpus of :mod:`tests.corruption` (truncated, bit-flipped, wrong-layout and
hostile images, model files, weight files and landmark arrays) plus a fuzz budget (random and
mutated bytes, random arrays) to every entry point, and prints a table per input class:

* **tried**: inputs of the class; **loaded**: accepted (fine for good-but-unusual inputs);
* **clear errors**: refused with a :class:`morphable.errors.MorphableError` of the documented
  subclass and a one-line message;
* **crashes**: anything else (another exception, a dead process, a message over several lines,
  a code-running pickle's side effect): must be 0;
* **hangs**: no answer within ``--timeout`` seconds: must be 0;
* **accepted bad**: a bad input that loaded, or a flagged landmark case that was not flagged: 0;
* **good lost**: a good input refused: 0.

Entry points: ``fitting.images.load_image`` (files and arrays), each model loader and
``morphable.registry.load_model`` on the same files, ``regressors.weights.load_regressor``,
``fitting.solver.fit_landmarks``; every case runs in a worker process watched by the parent, so
a segfault or a hang is counted, not fatal. Then a sample of inputs goes through the ``morphable``
command line (``info``, ``convert``, ``sample``, ``fit``) in subprocesses (exit status 0/1, one
``morphable: error:`` line, no traceback, no partial output file), and a batch of good and bad
photos through ``morphable fit DIR --out OUT``: uninterrupted, then interrupted by SIGINT/SIGTERM
after the first result and re-run with ``--resume``; the resumed output folder must equal the
uninterrupted one byte for byte.

The regressor weights used are a tiny randomly initialised network (``--weights`` to use real
ones): the fitted faces are nonsense, but every good image must still produce its files.

Examples::

    python -m benchmarks.robustness              # >= 1,000 bad inputs + fuzz, CLI and batch (minutes)
    python -m benchmarks.robustness --quick      # under 2 minutes
    python -m benchmarks.robustness --keep /tmp/corpus --json result.json
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # tests.corruption lives beside the package, not inside it
    sys.path.insert(0, str(REPO))

VERDICTS = ("ok", "clear-error", "crash", "hang", "accepted-bad", "lost-good", "wrong-error", "side-effect")


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # NOTES §4: one BLAS thread per process on small CPUs
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


# =========================================================================== worker side
def _worker(cases_file: str, root: str) -> int:
    """Answer case indices read from stdin with one JSON line each (run in a subprocess)."""
    import traceback
    import warnings

    import torch

    from tests.corruption import Case, Context, classify, registry_load, run_case

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    cases = [Case(**d) for d in json.loads(Path(cases_file).read_text())]
    ctx = Context(root)
    out = sys.stdout
    for line in sys.stdin:
        i = int(line)
        c = cases[i]
        t0 = time.perf_counter()
        exc, res = None, ""
        try:
            res = run_case(c, ctx)
        except Exception as e:  # noqa: BLE001 - classified below
            exc = e
        verdict, detail = classify(c, res, exc, root)
        if verdict == "crash" and exc is not None:
            detail += " | " + " / ".join(traceback.format_exception(exc)[-3:-1]).replace("\n", " ")[-300:]
        reg = None
        if c.kind in ("model", "fuzz") and c.loader in ("native", "bfm2017", "bfm2009", "sfm", "ict"):
            try:
                reg = ["ok", registry_load(c, ctx) or ""]
            except Exception as e:  # noqa: BLE001
                from morphable.errors import MorphableError

                one = isinstance(e, MorphableError) and str(e).strip() and "\n" not in str(e)
                reg = ["clear-error" if one else "crash", f"{type(e).__name__}: {str(e)[:200]}"]
        out.write(json.dumps({"i": i, "verdict": verdict, "detail": detail[:600], "registry": reg,
                              "sec": round(time.perf_counter() - t0, 3)}) + "\n")
        out.flush()
    return 0


# =========================================================================== parent side
class _Pool:
    """One worker process with a watchdog: a case that kills the worker is a crash, one that
    does not answer within ``timeout`` seconds a hang; the worker is restarted either way."""

    def __init__(self, cases_file: Path, root: Path, timeout: float):
        self.args = [sys.executable, "-m", "benchmarks.robustness", "--worker", str(cases_file), "--root", str(root)]
        self.timeout = timeout
        self.proc = None
        self.buf = b""

    def _start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=REPO, env=_env())
        self.buf = b""

    def _kill(self):
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                pass
            self.proc = None

    def run(self, i: int, first_timeout: float = 120.0) -> dict:
        fresh = self.proc is None
        if fresh:
            self._start()
        try:
            self.proc.stdin.write(f"{i}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            self._kill()
            return self.run(i)
        deadline = time.monotonic() + self.timeout + (first_timeout if fresh else 0.0)
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                return {"i": i, "verdict": "hang", "detail": f"no answer in {self.timeout:g} s"}
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.wait()
                    self._kill()
                    name = signal.Signals(-rc).name if rc < 0 and -rc in signal.Signals._value2member_map_ else rc
                    return {"i": i, "verdict": "crash", "detail": f"worker process died ({name})"}
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(10)
            except Exception:  # noqa: BLE001
                self._kill()


def run_cases(cases, root: Path, timeout: float, progress: bool = True) -> list[dict]:
    """Every case through its entry point in a watched worker: one result dict per case."""
    cases_file = root / "cases.json"
    cases_file.write_text(json.dumps([asdict(c) for c in cases]))
    pool = _Pool(cases_file, root, timeout)
    results = []
    t0 = time.perf_counter()
    try:
        for i, c in enumerate(cases):
            r = pool.run(i)
            r["case"] = c
            if r.get("registry") and r["registry"][0] == "crash" and r["verdict"] != "crash":
                r["verdict"], r["detail"] = "crash", "registry.load_model: " + r["registry"][1]
            results.append(r)
            if progress and (i + 1) % 250 == 0:
                print(f"[robustness] {i + 1}/{len(cases)} inputs, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        pool.close()
    return results


# --------------------------------------------------------------------------- the command line
def _cli(args, env=None, timeout=300.0, cwd=None):
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "morphable.cli", *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env=env or _env(), cwd=cwd or REPO)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        return None, "", "", time.perf_counter() - t0


def _cli_verdict(rc, err: str, expect_ok: bool | None, out_dir: Path | None = None, out_file: Path | None = None):
    """(verdict, detail) of one ``morphable`` run: exit 0, or 1 with exactly one error line."""
    if rc is None:
        return "hang", "timed out"
    if "Traceback" in err:
        return "crash", "traceback on stderr: " + err.strip().splitlines()[-1][:200]
    errs = [ln for ln in err.splitlines() if ln.startswith("morphable: error:")]
    if rc == 0:
        if out_file is not None and not out_file.is_file():
            return "crash", f"exit 0 without {out_file.name}"
        return ("accepted-bad", "exit 0") if expect_ok is False else ("ok", "exit 0")
    if rc != 1 or len(errs) != 1 or len(errs[0]) <= len("morphable: error: "):
        return "crash", f"exit {rc}, {len(errs)} error line(s): {err.strip()[-200:]}"
    if out_dir is not None:
        left = [p.name for p in out_dir.iterdir()] if out_dir.is_dir() else []
        if left:
            return "crash", f"partial output left after the error: {left[:5]}"
    return ("lost-good", errs[0][:200]) if expect_ok else ("clear-error", errs[0][:200])


def run_cli_sample(cases, root: Path, weights: Path, n: int, rng: np.random.Generator, timeout: float) -> list[dict]:
    """A sample of corpus inputs through ``morphable info / convert / sample / fit`` in subprocesses."""
    out = []
    work = root / "cli"
    work.mkdir(exist_ok=True)
    cache_env = _env(MORPHABLE_CACHE=str(root / "cache"))  # corpus ICT folders must not fill the user's cache
    models = [c for c in cases if c.kind == "model" and c.loader in ("native", "bfm2017", "bfm2009", "sfm", "ict")]
    images = [c for c in cases if c.kind == "image" and c.expect == "error"]

    def pick(pool, k):
        by_cls: dict = {}
        for c in pool:
            by_cls.setdefault(c.cls, []).append(c)
        chosen = [v[int(rng.integers(len(v)))] for _, v in sorted(by_cls.items())]  # one per class first
        rng.shuffle(chosen)
        rest = [c for c in pool if c not in chosen]
        extra = [rest[j] for j in rng.permutation(len(rest))[: max(0, k - len(chosen))]] if rest else []
        return (chosen + extra)[:k]

    n_model = max(1, (3 * n) // 4)
    for j, c in enumerate(pick(models, n_model)):
        src = root / "corpus" / c.path
        extra = ["--region", "full"] if c.loader == "ict" else []
        conv = list(extra)
        if c.loader in ("bfm2009", "bfm2017"):
            conv += ["--landmarks", root / "corpus" / c.args["landmarks"]]
        if c.loader == "sfm" and "mapping" in c.args:
            conv += ["--mapping", root / "corpus" / c.args["mapping"]]
        sub = ["info", "convert", "sample"][j % 3]
        expect_ok = False if c.expect == "error" else None  # good BFM files still need --landmarks: either
        d = work / f"{sub}-{j:03d}"
        d.mkdir()
        if sub == "info":
            rc, so, se, dt = _cli(["info", src, *extra], env=cache_env, timeout=timeout)
            v = _cli_verdict(rc, se, expect_ok)
        elif sub == "convert":
            dst = d / "out.h5"
            rc, so, se, dt = _cli(["convert", src, "--out", dst, *conv], env=cache_env, timeout=timeout)
            v = _cli_verdict(rc, se, expect_ok, out_dir=d, out_file=dst)
        else:
            dst = d / "face.obj"
            rc, so, se, dt = _cli(["sample", src, "--out", dst, *extra], env=cache_env, timeout=timeout)
            v = _cli_verdict(rc, se, expect_ok, out_dir=d, out_file=dst)
        out.append({"cls": f"cli-{sub}", "case": c.id, "verdict": v[0], "detail": v[1], "sec": dt})
    for j, c in enumerate(pick(images, max(1, n - n_model))):
        d = work / f"fit-{j:03d}"
        rc, so, se, dt = _cli(["fit", root / "corpus" / c.path, "--out", d, "--weights", weights], timeout=timeout)
        v = _cli_verdict(rc, se, False, out_dir=d)
        out.append({"cls": "cli-fit", "case": c.id, "verdict": v[0], "detail": v[1], "sec": dt})
    return out


# --------------------------------------------------------------------------- the batch
def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def _diff(a: dict, b: dict) -> list[str]:
    d = [f"only in the uninterrupted run: {k}" for k in sorted(set(a) - set(b))]
    d += [f"only in the resumed run: {k}" for k in sorted(set(b) - set(a))]
    d += [f"differs: {k}" for k in sorted(set(a) & set(b)) if a[k] != b[k]]
    return d


def make_batch(folder: Path, cases, corpus: Path, n_good: int, n_bad: int, rng: np.random.Generator,
               many_faces: bool = False) -> tuple[list[str], list[str]]:
    """A folder mixing ``n_good`` face photos (faces68) and ``n_bad`` corpus images, interleaved by
    name, the first two good (so a signal sent after the first result lands in a good image).
    Good photos are those the default detector finds a face in (a miss is the detector's limit,
    not a lost item). Returns (good stems, bad stems)."""
    from fitting.detect import default_detector
    from fitting.images import load_image
    from tests.corruption import face_photos

    folder.mkdir(parents=True, exist_ok=True)
    photos = face_photos()
    if not photos:
        raise SystemExit("the batch needs ../shared/data/faces68 beside the checkout")
    det = default_detector()
    good = []
    for k in rng.permutation(len(photos)):
        if len(good) == n_good:
            break
        if len(det.detect(load_image(photos[int(k)]))):
            good.append(photos[int(k)])
    bad_pool = [c for c in cases if c.kind == "image" and (c.expect == "error" or c.cls == "no-face")
                and "max_pixels" not in c.args and (corpus / c.path).is_file()]
    by_cls: dict = {}
    for c in bad_pool:
        by_cls.setdefault(c.cls, []).append(c)
    bad = [v[int(rng.integers(len(v)))] for _, v in sorted(by_cls.items())]
    rng.shuffle(bad)
    more = [c for c in bad_pool if c not in bad]
    bad = (bad + [more[int(k)] for k in rng.permutation(len(more))])[:n_bad]
    goods, bads = [], []
    order = [("good", g) for g in good[:2]]
    rest_g, k = good[2:], 0
    for j, c in enumerate(bad):
        order.append(("bad", c))
        if j % 2 == 1 and k < len(rest_g):
            order.append(("good", rest_g[k]))
            k += 1
    order += [("good", g) for g in rest_g[k:]]
    for j, (what, item) in enumerate(order):
        if what == "good":
            stem = f"{j:03d}_good"
            shutil.copyfile(item, folder / f"{stem}.jpg")
            goods.append(stem)
        else:
            suffix = Path(item.path).suffix or ".jpg"
            stem = f"{j:03d}_bad_{item.cls}"
            shutil.copyfile(corpus / item.path, folder / f"{stem}{suffix}")
            bads.append(stem)
    if many_faces:
        shutil.copyfile(corpus / "img/special/faces30.jpg", folder / "zzz_good_faces30.jpg")
        goods.append("zzz_good_faces30")
    return goods, bads


def run_fit(in_dir: Path, out_dir: Path, weights: Path, resume=False, interrupt=None, twice=False, timeout=900.0):
    """``morphable fit IN --out OUT --weights W [--resume]``; ``interrupt``: a signal sent after the
    first result line (``twice``: sent again right away, the abort-now path). Returns
    (exit status, stdout, stderr, seconds)."""
    cmd = [sys.executable, "-m", "morphable.cli", "fit", str(in_dir), "--out", str(out_dir), "--weights", str(weights)]
    if resume:
        cmd.append("--resume")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    lines = []
    if interrupt is not None:
        first = p.stdout.readline()  # the first image's result line
        lines.append(first)
        p.send_signal(interrupt)
        if twice:
            time.sleep(0.05)
            p.send_signal(interrupt)
    try:
        so, se = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        so, se = p.communicate()
        return None, "".join(lines) + so, se, time.perf_counter() - t0
    return p.returncode, "".join(lines) + so, se, time.perf_counter() - t0


def run_batch(root: Path, cases, weights: Path, n_good: int, n_bad: int, rng, signals, many_faces=False,
              timeout=900.0) -> dict:
    """The batch section: good items lost, bad items reported, and interrupted + resumed runs
    compared with the uninterrupted one."""
    from fitting.outputs import output_paths

    in_dir = root / "batch" / "in"
    goods, bads = make_batch(in_dir, cases, root / "corpus", n_good, n_bad, rng, many_faces)
    ref = root / "batch" / "reference"
    rc, so, se, dt = run_fit(in_dir, ref, weights, timeout=timeout)
    lost = [g for g in goods if not all(p.is_file() for p in output_paths(ref, g, 0).values())]
    err_lines = [ln for ln in se.splitlines() if ln.startswith("morphable: error:")]
    unreported = [b for b in bads if sum(f"{b}." in ln for ln in err_lines) != 1]
    res = {"good": len(goods), "bad": len(bads), "exit": rc, "seconds": round(dt, 1), "lost": lost,
           "unreported": unreported, "error_lines": len(err_lines), "traceback": "Traceback" in se,
           "faces": len([p for p in ref.glob("*.json")]), "runs": []}
    reference = _snapshot(ref)
    for sig, twice in signals:
        name = signal.Signals(sig).name + (" x2" if twice else "")
        out = root / "batch" / f"resumed-{name.replace(' ', '')}"
        rc1, so1, se1, dt1 = run_fit(in_dir, out, weights, interrupt=sig, twice=twice, timeout=timeout)
        temp = [p.name for p in out.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
        half = [j.stem for j in out.glob("*.json") if not all(p.is_file() for p in output_paths(out, j.stem, 0).values())]
        done_before = len(list(out.glob("*.json")))
        rc2, so2, se2, dt2 = run_fit(in_dir, out, weights, resume=True, timeout=timeout)
        skipped = sum(": skipped" in ln for ln in so2.splitlines())
        # 130 = stopped cleanly; a second signal after the clean stop may end the process by that
        # signal (the shell shows 128 + signal number as well): both leave only complete files
        res["runs"].append({"signal": name, "interrupted_exit": rc1, "interrupted_ok": rc1 in (130, -int(sig)),
                            "resumed_exit": rc2, "partial_files": temp + half,
                            "faces_before_resume": done_before, "skipped_on_resume": skipped,
                            "aborted_mid_image": "aborted, its files removed" in se1,
                            "traceback": "Traceback" in se1 + se2, "diff": _diff(reference, _snapshot(out)),
                            "seconds": round(dt1 + dt2, 1)})
    return res


# --------------------------------------------------------------------------- report
def table(results: list[dict], cli: list[dict]) -> tuple[str, dict]:
    rows: dict = {}
    for r in results:
        c = r["case"]
        key = (c.kind if c.kind != "fuzz" else "fuzz", c.cls)
        rows.setdefault(key, dict.fromkeys(VERDICTS, 0))
        rows[key][r["verdict"]] += 1
    for r in cli:
        rows.setdefault(("cli", r["cls"]), dict.fromkeys(VERDICTS, 0))
        rows[("cli", r["cls"])][r["verdict"]] += 1
    head = ("| kind | class | tried | loaded | clear errors | crashes | hangs | accepted bad | good lost |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    tot = dict.fromkeys(VERDICTS, 0)
    for (kind, cls), v in sorted(rows.items(), key=lambda kv: (["image", "model", "weights", "landmarks", "fuzz", "cli"]
                                                                .index(kv[0][0]), kv[0][1])):
        for k in VERDICTS:
            tot[k] += v[k]
        crashes = v["crash"] + v["side-effect"]
        wrong = v["accepted-bad"] + v["wrong-error"]
        lines.append(f"| {kind} | {cls} | {sum(v.values())} | {v['ok']} | {v['clear-error']} | {crashes} | {v['hang']} "
                     f"| {wrong} | {v['lost-good']} |")
    lines.append(f"| **all** | | **{sum(tot.values())}** | {tot['ok']} | {tot['clear-error']} | "
                 f"**{tot['crash'] + tot['side-effect']}** | **{tot['hang']}** | **{tot['accepted-bad'] + tot['wrong-error']}** "
                 f"| **{tot['lost-good']}** |")
    return "\n".join(lines), tot


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.robustness", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller corpus, fuzz budget and batch (under 2 minutes)")
    ap.add_argument("--seed", type=int, default=0, help="corpus and fuzz seed (default 0)")
    ap.add_argument("--scale", type=float, default=None, help="corpus scale (default 1.0; 0.15 with --quick)")
    ap.add_argument("--fuzz", type=int, default=None, help="fuzz inputs per entry point (default 150; 20 with --quick)")
    ap.add_argument("--cli", type=int, default=None, help="inputs through the command line (default 32; 6 with --quick)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before an input counts as a hang (default 60)")
    ap.add_argument("--weights", type=Path, default=None, help="regressor weights for the CLI (default: a tiny random one)")
    ap.add_argument("--keep", type=Path, default=None, help="write the corpus and outputs here and keep them")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--no-cli", action="store_true", help="skip the command-line sample and the batch")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return _worker(a.worker, a.root)

    from tests.corruption import make_corpus, make_fuzz, save_tiny_regressor

    scale = a.scale if a.scale is not None else (0.15 if a.quick else 1.0)
    n_fuzz = a.fuzz if a.fuzz is not None else (20 if a.quick else 150)
    n_cli = a.cli if a.cli is not None else (6 if a.quick else 32)
    t_start = time.perf_counter()
    tmp = None
    if a.keep is not None:
        root = a.keep
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="morphable-robustness-")
        root = Path(tmp.name)
    try:
        corpus = root / "corpus"
        cases = make_corpus(corpus, seed=a.seed, scale=scale)
        fuzz = make_fuzz(corpus, seed=a.seed, n=n_fuzz)
        n_bad = sum(c.bad for c in cases)
        print(f"[robustness] corpus: {len(cases)} inputs ({n_bad} bad) + {len(fuzz)} fuzz inputs, seed {a.seed}, "
              f"scale {scale:g} ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
        results = run_cases(cases + fuzz, corpus, a.timeout)
        print(f"[robustness] entry points done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
        cli, batch = [], None
        if not a.no_cli:
            weights = a.weights
            if weights is None:
                from morphable.registry import load_model

                weights = save_tiny_regressor(root / "tiny-random.pt", model=load_model())
            rng = np.random.default_rng(a.seed + 20_000)
            cli = run_cli_sample(cases, root, weights, n_cli, rng, timeout=max(300.0, a.timeout))
            print(f"[robustness] command line done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
            sigs = [(signal.SIGINT, False), (signal.SIGTERM, False)] + ([] if a.quick else [(signal.SIGINT, True)])
            batch = run_batch(root, cases, weights, 3 if a.quick else 6, 4 if a.quick else 16, rng, sigs,
                              many_faces=not a.quick)
        text, tot = table(results, cli)
        print(f"\n## Robustness: {len(results) + len(cli)} inputs ({n_bad} bad corpus inputs + {len(fuzz)} fuzz + "
              f"{len(cli)} command lines), seed {a.seed}\n")
        print(text)
        problems = [(r["case"].id, r["verdict"], r["detail"], r["case"].note) for r in results
                    if r["verdict"] not in ("ok", "clear-error")]
        problems += [(f"{r['cls']} {r['case']}", r["verdict"], r["detail"], "") for r in cli
                     if r["verdict"] not in ("ok", "clear-error")]
        if problems:
            print("\nproblems:")
            for cid, verdict, detail, note in problems[:40]:
                print(f"- {cid}: {verdict}: {detail[:300]}" + (f" ({note})" if note else ""))
        ok_batch = True
        if batch is not None:
            print(f"\n### Batch: `morphable fit DIR --out OUT` on {batch['good']} good + {batch['bad']} bad images\n")
            print(f"- uninterrupted: exit {batch['exit']}, {batch['faces']} face(s) written, good items lost: "
                  f"**{len(batch['lost'])}**{' ' + str(batch['lost']) if batch['lost'] else ''}, bad items reported on "
                  f"their own line: {batch['bad'] - len(batch['unreported'])}/{batch['bad']}"
                  + (", TRACEBACK" if batch["traceback"] else "") + f" ({batch['seconds']} s)")
            for r in batch["runs"]:
                print(f"- {r['signal']} after the first result: exit {r['interrupted_exit']}"
                      f"{' (aborted mid-image, its files removed)' if r['aborted_mid_image'] else ''}, "
                      f"{r['faces_before_resume']} face file(s), partial files {len(r['partial_files'])}; "
                      f"`--resume`: exit {r['resumed_exit']}, "
                      f"{r['skipped_on_resume']} image(s) skipped; diff against the uninterrupted run: "
                      f"**{len(r['diff'])}**{' ' + str(r['diff'][:5]) if r['diff'] else ' (identical bytes)'}")
            ok_batch = (not batch["lost"] and not batch["unreported"] and batch["exit"] == 1 and not batch["traceback"]
                        and all(not r["diff"] and not r["partial_files"] and r["interrupted_ok"]
                                and r["resumed_exit"] == 1 and not r["traceback"] for r in batch["runs"]))
        bad_total = tot["crash"] + tot["side-effect"] + tot["hang"] + tot["accepted-bad"] + tot["wrong-error"] + tot["lost-good"]
        print(f"\ncrashes {tot['crash'] + tot['side-effect']}, hangs {tot['hang']}, accepted bad "
              f"{tot['accepted-bad'] + tot['wrong-error']}, good lost {tot['lost-good'] + (len(batch['lost']) if batch else 0)}"
              f", batch {'OK' if ok_batch else 'FAILED'} ({time.perf_counter() - t_start:.0f} s)")
        if a.json is not None:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps({
                "seed": a.seed, "scale": scale, "fuzz_per_entry_point": n_fuzz, "corpus_inputs": len(cases),
                "bad_corpus_inputs": n_bad, "totals": tot, "batch": batch,
                "cases": [{"id": r["case"].id, "verdict": r["verdict"], "detail": r["detail"], "sec": r.get("sec")}
                          for r in results], "cli": cli}, indent=1))
        return 0 if bad_total == 0 and ok_batch else 1
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
