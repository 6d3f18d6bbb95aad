"""Draw the figures of docs/conventions.md from the library itself.

    python docs/scripts/make_convention_figures.py            # writes docs/img/conventions/*.png

Every picture is the default model (ICT-FaceKit, :func:`morphable.registry.load_model`) projected
with :func:`morphable.geometry.project` (``x = s * P @ R @ X + t``), rotated with
:func:`morphable.geometry.angles_to_rotmat` and shaded with :mod:`morphable.render`. Before
drawing the pose figure the script checks the sign conventions it illustrates (positive yaw
moves the nose tip to image-left, positive pitch moves it up, positive roll moves the top of the
head to image-right) and stops if the library disagrees with the text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figlib  # noqa: E402

OUT = figlib.IMG / "conventions"
NOSE_TIP, NOSE_BRIDGE, CHIN = 30, 27, 8

#: iBUG-68 groups, 0-based (the library's order).
GROUPS = [
    ("jaw", range(0, 17)), ("right brow", range(17, 22)), ("left brow", range(22, 27)),
    ("nose bridge", range(27, 31)), ("nostrils", range(31, 36)), ("right eye", range(36, 42)),
    ("left eye", range(42, 48)), ("outer lips", range(48, 60)), ("inner lips", range(60, 68)),
]
AXIS_COLORS = ("tab:red", "tab:green", "tab:blue")


def _arrow(ax, p0, p1, color, text=None, text_at=None, lw=2.0, **kw):
    ax.annotate("", xy=p1, xytext=p0, arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, mutation_scale=14, **kw))
    if text:
        x, y = text_at if text_at is not None else p1
        ax.text(x, y, text, color=color, fontsize=9, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))


def _img_axes(ax, r: figlib.Render, title: str, ticks: bool = False):
    ax.imshow(r.rgb)
    ax.set_title(title)
    if not ticks:
        ax.set_xticks([])
        ax.set_yticks([])


# --------------------------------------------------------------------------- frames
def fig_frames(model, plt) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.3))
    # (a) image frame
    ax = axes[0]
    r = figlib.render(model, (240, 240), yaw=0, scale=0.78)
    ax.imshow(r.rgb)
    H, W = r.mask.shape
    ax.set_xticks([0, 60, 120, 180, 239])
    ax.set_yticks([0, 60, 120, 180, 239])
    ax.set_xlabel("x (pixels) →")
    ax.set_ylabel("← y (pixels, down)")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    _arrow(ax, (0, 0), (70, 0), "black", "+x", (80, 8))
    _arrow(ax, (0, 0), (0, 70), "black", "+y", (10, 80))
    n = r.landmarks[NOSE_TIP]
    ax.plot([n[0]], [n[1]], "o", color="tab:orange", ms=5)
    ax.annotate(f"nose tip\n({n[0]:.1f}, {n[1]:.1f}) px", xy=n[:2], xytext=(150, 22), fontsize=8, color="tab:orange",
                arrowprops=dict(arrowstyle="-", color="tab:orange", lw=1))
    ax.set_title("image frame: pixels, origin = centre of the\ntop-left pixel, +x right, +y down")
    # inset: pixel centres sit on integers
    ins = ax.inset_axes([0.03, 0.03, 0.30, 0.24])
    ins.imshow(np.indices((3, 4)).sum(0) % 2, cmap="Greys", vmin=-2, vmax=4)
    for y in range(3):
        for x in range(4):
            ins.plot(x, y, ".", color="tab:orange", ms=4)
    ins.text(0.08, 0.3, "(0,0)", fontsize=7)
    ins.text(1.08, 0.3, "(1,0)", fontsize=7)
    ins.text(0.08, 1.3, "(0,1)", fontsize=7)
    ins.set_xticks([])
    ins.set_yticks([])
    ins.set_title("zoom: pixel centres (dots) on\nintegers, pixel edges at ±0.5", fontsize=7, pad=2)

    # (b) model frame, front view; (c) side view
    for ax, yaw, title in ((axes[1], 0.0, "model frame, front view (yaw 0)"),
                           (axes[2], -90.0, "model frame, side view (yaw −90°)")):
        r = figlib.render(model, (300, 300), yaw=yaw, scale=1.0)
        _img_axes(ax, r, title + "\nmillimetres, right-handed, origin of the default model")
        o = r.translation
        L = 70.0 * r.scale  # 70 mm arrows
        names = ("+x subject's left", "+y up", "+z out of the face")
        for i in range(3):
            d = np.array([r.rotation[0, i], -r.rotation[1, i]])
            if np.linalg.norm(d) < 1e-6:  # axis along the view direction
                toward = r.rotation[2, i] > 0
                ax.plot(*o, marker="o", ms=16, mfc="white", mec=AXIS_COLORS[i], mew=2)
                ax.plot(*o, marker="." if toward else "x", ms=9 if toward else 8, color=AXIS_COLORS[i], mew=2)
                ax.text(o[0] + 12, o[1] + 28, names[i] + ("\n(toward you)" if toward else "\n(into the page)"),
                        color=AXIS_COLORS[i], fontsize=9)
                continue
            p1 = o + L * d
            _arrow(ax, o, p1, AXIS_COLORS[i], names[i], o + (L + 28) * d)
        ax.plot([20, 20 + 50 * r.scale], [285, 285], "k-", lw=3)
        ax.text(20 + 25 * r.scale, 277, "50 mm", ha="center", fontsize=8)
    axes[1].text(150, 8, "a camera facing the subject sees +x to the image right", ha="center", fontsize=8)
    fig.tight_layout()
    fig.subplots_adjust(top=0.80)
    return figlib.save_png(fig, OUT / "frames.png")


# --------------------------------------------------------------------------- weak perspective
def fig_weak_perspective(model, plt) -> Path:
    import torch

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 5.0), gridspec_kw=dict(width_ratios=[1, 1.1]))
    ax = axes[0]
    V = model.mean.numpy()
    L = model.landmark_points(torch.zeros(1, model.n_shape))[0].numpy()
    sub = V[:: 7]
    ax.scatter(sub[:, 0], sub[:, 1], s=1, c="0.75")
    ax.scatter(L[:, 0], L[:, 1], s=9, c="tab:green")
    ax.plot([0], [0], "k+", ms=12, mew=2)
    ax.text(3, -8, "origin", fontsize=8)
    ax.set_aspect("equal")
    ax.set_xlabel("X (mm, +x = subject's left)")
    ax.set_ylabel("Y (mm, up)")
    ax.set_title("model points X (mm), front view; +z toward you\nmean face and its 68 landmark vertices")
    ax.grid(alpha=0.3)

    ax = axes[1]
    s, t = 1.5, np.array([215.0, 185.0])
    yaw, pitch, roll = 25.0, 5.0, -8.0
    r = figlib.render(model, (400, 400), yaw=yaw, pitch=pitch, roll=roll, scale=s, center=False, translation=t)
    ax.imshow(r.rgb)
    ax.scatter(r.landmarks[:, 0], r.landmarks[:, 1], s=8, c="tab:green", zorder=3)
    ax.plot(*t, "k+", ms=12, mew=2)
    _arrow(ax, (0, 0), tuple(t), "tab:purple", lw=1.5)
    ax.annotate(f"t = ({t[0]:.0f}, {t[1]:.0f}) px: image position\nof the model origin (+), which\nlies inside the head",
                xy=tuple(t), xytext=(225, 350), color="tab:purple", fontsize=8,
                arrowprops=dict(arrowstyle="-", color="tab:purple", lw=0.8))
    ax.plot([20, 20 + 100 * s], [385, 385], "k-", lw=3)
    ax.text(20 + 50 * s, 375, f"100 mm × s = {100 * s:.0f} px", ha="center", fontsize=8)
    ax.set_title(f"x = s · P · R · X + t  (pixels, y down)\nR from yaw {yaw:+.0f}°, pitch {pitch:+.0f}°, "
                 f"roll {roll:+.0f}°;  s = {s} px/mm;  P = [[1,0,0],[0,−1,0]]")
    ax.set_xlim(-0.5, 399.5)
    ax.set_ylim(399.5, -0.5)
    fig.tight_layout()
    return figlib.save_png(fig, OUT / "weak_perspective.png")


# --------------------------------------------------------------------------- pose angles
def check_pose_signs(model) -> None:
    """Stop if the library's pose signs differ from what the docs say."""
    def pts(**a):
        return figlib.render(model, (200, 200), scale=1.0, center=False, translation=(100, 100), **a).landmarks

    z = pts()
    y, p, r = pts(yaw=20), pts(pitch=20), pts(roll=20)
    ok = {
        "positive yaw moves the nose tip to image-left": y[NOSE_TIP, 0] < z[NOSE_TIP, 0] - 1,
        "positive pitch moves the nose tip up": p[NOSE_TIP, 1] < z[NOSE_TIP, 1] - 1,
        "positive roll moves the top of the head to image-right":
            (r[NOSE_BRIDGE, 0] - r[CHIN, 0]) > (z[NOSE_BRIDGE, 0] - z[CHIN, 0]) + 1,
    }
    bad = [k for k, v in ok.items() if not v]
    if bad:
        raise SystemExit("the library disagrees with the documented pose convention: " + "; ".join(bad))
    print("pose signs checked: " + "; ".join(ok))


def fig_pose(model, plt) -> Path:
    from morphable.render import draw_axes

    check_pose_signs(model)
    size, s = 260, 0.7
    c = np.array([130.0, 132.0])
    V = model.mean.numpy()
    top = int(np.argmax(V[:, 1] - 10.0 * np.abs(V[:, 0])))  # the top of the forehead, on the midline
    rows = [("yaw", NOSE_TIP, "turns toward image-left\n(the subject's own right)"),
            ("pitch", NOSE_TIP, "face turns up"),
            ("roll", None, "top of the head\nmoves toward image-right")]
    angles = (-30.0, 0.0, 30.0)
    fig, axes = plt.subplots(3, 3, figsize=(9.0, 10.2))
    for i, (name, pid, meaning) in enumerate(rows):
        r0 = figlib.render(model, (size, size), scale=s, center=False, translation=c)
        for j, a in enumerate(angles):
            ax = axes[i, j]
            r = figlib.render(model, (size, size), scale=s, center=False, translation=c, **{name: a})
            img = draw_axes(r.rgb, r.rotation, (36.0, size - 36.0), 26.0, thickness=2)
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if a > 0:
                ax.set_title(f"{name} = {a:+.0f}°: {meaning}", fontsize=10, fontweight="bold")
            else:
                ax.set_title(f"{name} = {a:+.0f}°" if a else f"{name} = 0", fontsize=10)
            if a != 0:
                if pid is None:
                    p0, p1 = r0.vertices_img[top, :2], r.vertices_img[top, :2]
                else:
                    p0, p1 = r0.landmarks[pid, :2], r.landmarks[pid, :2]
                ax.plot(*p0, "o", mfc="none", mec="tab:orange", ms=8, mew=1.8)
                ax.plot(*p1, "o", color="tab:orange", ms=7)
                ax.annotate("", xy=p1, xytext=p0, arrowprops=dict(
                    arrowstyle="-|>", color="tab:orange", lw=2.4, mutation_scale=18,
                    connectionstyle=f"arc3,rad={0.3 if a > 0 else -0.3}", shrinkA=5, shrinkB=5))
        axes[i, 0].set_ylabel(name, fontsize=13)
    fig.suptitle("pose angles, AFLW2000-3D convention: R = Rx(pitch) · Ry(yaw) · Rz(roll), degrees at the API\n"
                 "orange: the nose tip (roll: the top of the forehead) moving from where it is at 0°\n"
                 "corner gizmo: the head's axes, x red (subject's left), y green (up), z blue (out of the face)",
                 fontsize=9.5)
    fig.tight_layout()
    return figlib.save_png(fig, OUT / "pose_angles.png")


# --------------------------------------------------------------------------- 68 landmarks
def fig_landmarks(model, plt) -> Path:
    import torch

    size = 760
    expr = torch.zeros(model.n_expr)
    names = list(model.info.expression_names)
    if "jawOpen" in names:  # open the mouth a little so the inner-lip points separate
        expr[names.index("jawOpen")] = 0.3
    r = figlib.render(model, (size, size), scale=3.4 * size / 760, expr=expr)
    fig, ax = plt.subplots(figsize=(9.5, 9.5))
    ax.imshow(r.rgb)
    P = r.landmarks[:, :2]
    centre = P[[30]].mean(0)
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan"]
    colors = lambda g: palette[g]  # noqa: E731
    for g, (name, idx) in enumerate(GROUPS):
        idx = list(idx)
        q = P[idx]
        gc = q.mean(0)
        ax.plot(q[:, 0], q[:, 1], "-", color=colors(g), lw=0.8, alpha=0.6)
        ax.scatter(q[:, 0], q[:, 1], s=14, color=colors(g), zorder=3, label=f"{idx[0]}–{idx[-1]} {name}")
        for k in idx:
            p = P[k]
            if name == "jaw":
                d = p - centre
            elif name in ("inner lips",):
                d = gc - p  # labels inside the mouth
                d[1] *= 0.4
            elif name == "nose bridge":
                d = np.array([1.0, 0.0])
            else:
                d = p - gc
            d = d / (np.linalg.norm(d) + 1e-9)
            off = {"jaw": 16, "inner lips": 8, "nose bridge": 14}.get(name, 12)
            ax.text(*(p + off * d), str(k), fontsize=7.5, ha="center", va="center", color="black")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9, title="0-based index (iBUG number − 1)",
              title_fontsize=8)
    ax.set_title("the 68 landmarks (iBUG / 300-W order) on the mean face, front view (mouth opened a little)\n"
                 "'right' = the subject's right = image-left")
    fig.tight_layout()
    return figlib.save_png(fig, OUT / "landmarks68.png")


# --------------------------------------------------------------------------- 3D vs 2D contour
def silhouette_jaw(r: figlib.Render, model, n: int, chin: np.ndarray, start_y: float) -> np.ndarray:
    """``n`` points evenly spaced (arc length) along the visible outline of the subject's right
    cheek (image-left when the face turns left), from the row ``start_y`` down to the chin: where a
    300-W annotator puts the jaw points 0..n-1.

    The outline is the leftmost *visible* vertex, row by row, among the lateral vertices (model
    x < -30 mm, so the nose and lips, which may stick out further at this yaw, are not taken).
    """
    from morphable.render import vertex_visibility

    H, W = r.mask.shape
    V = r.vertices_img
    vis = vertex_visibility(V, model.triangles.numpy(), H, W)
    lateral = vis & (model.mean.numpy()[:, 0] < -30.0)
    P = V[lateral, :2]
    pts = []
    for y in np.arange(start_y, chin[1], 2.0):
        band = P[np.abs(P[:, 1] - y) < 1.5]
        if len(band):
            pts.append(band[np.argmin(band[:, 0])])
    pts.append(chin[:2])
    pts = np.array(pts)
    seg = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))]
    at = np.linspace(0.0, seg[-1], n + 1)[:-1]
    return np.stack([np.interp(at, seg, pts[:, 0]), np.interp(at, seg, pts[:, 1])], -1)


def fig_contour(model, plt) -> Path:
    yaw = 50.0
    r = figlib.render(model, (420, 420), yaw=yaw, scale=1.45)
    vis = figlib.landmark_visibility(r, model)
    P = r.landmarks[:, :2]
    hidden = [k for k in range(0, 8) if not vis[k]]
    two_d = P.copy()
    two_d[0:8] = silhouette_jaw(r, model, 8, P[CHIN], P[0, 1])
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 6.0))
    for ax, pts, title in ((axes[0], P, "3D-style landmarks (AFLW2000-3D `pt3d_68`, our default)\n"
                                        "fixed model vertices: the far jaw is drawn where it is, behind the cheek"),
                           (axes[1], two_d, "2D contour landmarks (300-W `.pts`, faces68, ytf68)\n"
                                            "the far jaw points lie on the visible outline")):
        ax.imshow(r.rgb)
        ax.plot(pts[:17, 0], pts[:17, 1], "-", color="tab:red", lw=1.2)
        other = [k for k in range(68) if k >= 17]
        ax.scatter(pts[other, 0], pts[other, 1], s=10, c="tab:green", zorder=3)
        if pts is P:
            vis_j = [k for k in range(17) if k not in hidden]
            ax.scatter(pts[vis_j, 0], pts[vis_j, 1], s=22, c="tab:red", zorder=4, label="jaw, visible")
            ax.scatter(pts[hidden, 0], pts[hidden, 1], s=26, facecolors="white", edgecolors="tab:red", lw=1.5,
                       zorder=4, label="jaw, hidden by the face (z-buffer)")
        else:
            ax.scatter(pts[:17, 0], pts[:17, 1], s=22, c="tab:red", zorder=4, label="jaw")
            ax.scatter(P[0:8, 0], P[0:8, 1], s=12, facecolors="none", edgecolors="0.4", lw=0.8, zorder=3,
                       label="(3D-style points, for reference)")
        for k in (0, 4, 8):
            ax.text(pts[k, 0] - 6, pts[k, 1] + 2, str(k), fontsize=8, ha="right", color="tab:red")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title(title, fontsize=9.5)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"the same face at yaw {yaw:+.0f}°: the two jaw-line conventions differ only on the side turned away",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return figlib.save_png(fig, OUT / "contour_landmarks.png")


FIGURES = {"frames": fig_frames, "weak_perspective": fig_weak_perspective, "pose": fig_pose,
           "landmarks": fig_landmarks, "contour": fig_contour}


def main(argv=None) -> int:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=sorted(FIGURES), action="append", help="draw only these figures")
    ap.add_argument("--out-dir", type=Path, default=OUT, help="where to write (default docs/img/conventions)")
    args = ap.parse_args(argv)
    OUT = args.out_dir
    figlib.quiet_threads()
    from morphable.registry import load_model

    model = load_model()
    plt = figlib.pyplot()
    for name in args.only or FIGURES:
        FIGURES[name](model, plt)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
