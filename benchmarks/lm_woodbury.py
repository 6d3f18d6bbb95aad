r"""What a shared-eigenbasis (Woodbury) solve would save in the LM step: ``python -m benchmarks.lm_woodbury``.

A measurement for issue #3's "next factor", not a code path of the solver. With the same point
weights for every face, the coefficient block of the LM system is exactly

    A = s^2 (G - Jz^T Jz) + c I,    G = sum_l B_l^T B_l (shared),   Jz = [r3^T B_l]_l (68 x K)

(``r3`` the third row of the face's rotation, ``c`` prior + Levenberg damping). The solver today
forms A per face (from 6 shared Gram blocks) and factorises it (``cholesky_ex``, K = 153 for the
default model). Here ``G = V diag(sigma) V^T`` is decomposed once, so the shared part is diagonal
for every face and the Woodbury identity leaves one 68 x 68 Cholesky per face plus batched GEMMs.

Prints the time of both paths for the same 1024 random faces (float32), their largest relative
difference, and the ratio, at the thread count given (default 1), in chunks of 64 and unchunked.
"""
from __future__ import annotations

import argparse
import os
import time

import torch


def _faces(n: int, K: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    R = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))[0]
    R = R * torch.linalg.det(R)[:, None, None].sign()  # proper rotations
    s = 0.02 + 0.01 * torch.rand(n, generator=g)  # mm -> normalised image units, as in the solver
    c = 1.0 + torch.rand(n, generator=g)
    return R, s, c, torch.randn(n, K, generator=g)


class Paths:
    """Both solves for one landmark basis Bc (L, 3, K)."""

    def __init__(self, Bc: torch.Tensor):
        self.L, _, self.K = Bc.shape
        self.gram = torch.einsum("lik,ljm->ijkm", Bc, Bc).contiguous()  # (3, 3, K, K)
        G = torch.einsum("lak,lam->km", Bc, Bc).double()
        sig, V = torch.linalg.eigh(G)
        self.sig, self.V = sig.to(Bc.dtype), V.to(Bc.dtype)
        self.C = torch.einsum("mk,lam->akl", self.V, Bc).contiguous()  # (3, K, L) = V^T B_a^T

    def cholesky(self, R, s, c, rhs):
        """A from the Gram blocks, per-face Cholesky, two triangular solves (the solver's path)."""
        n, K = R.shape[0], self.K
        R2 = R[:, :2, :]
        M = (R2.transpose(1, 2) @ R2) * (s ** 2)[:, None, None]
        A = (M.reshape(n, 9) @ self.gram.view(9, K * K)).view(n, K, K)
        A.diagonal(dim1=1, dim2=2).add_(c[:, None])
        Lc, _ = torch.linalg.cholesky_ex(A)
        z = torch.linalg.solve_triangular(Lc, rhs[..., None], upper=False)
        return torch.linalg.solve_triangular(Lc.transpose(1, 2), z, upper=True).squeeze(-1)

    def woodbury(self, R, s, c, rhs):
        """Shared eigenbasis + rank-L Woodbury correction: one L x L Cholesky per face."""
        n, K, L = R.shape[0], self.K, self.L
        U = (R[:, 2, :] @ self.C.view(3, K * L)).view(n, K, L)  # V^T Jz^T
        Di = 1.0 / ((s ** 2)[:, None] * self.sig + c[:, None])
        DU = U * Di[..., None]
        cap = -(U.transpose(1, 2) @ DU)  # 1/s^2 I - U^T D^-1 U (SPD because A is)
        cap.diagonal(dim1=1, dim2=2).add_((1.0 / s ** 2)[:, None])
        Lc, _ = torch.linalg.cholesky_ex(cap)
        y = Di * (rhs @ self.V)
        w = (y[:, None, :] @ U).transpose(1, 2)
        z = torch.linalg.solve_triangular(Lc, w, upper=False)
        z = torch.linalg.solve_triangular(Lc.transpose(1, 2), z, upper=True)
        return (y + (DU @ z).squeeze(-1)) @ self.V.T


def _time(fn, args, chunk: int, repeats: int) -> float:
    n = args[0].shape[0]

    def run():
        for i in range(0, n, chunk):
            fn(*(a[i:i + chunk] for a in args))

    run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lm_woodbury", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--faces", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from morphable.registry import load_model

    m = load_model()
    Bc = torch.cat([m.shape_basis[m.landmarks], m.expr_basis[m.landmarks]], -1).float()
    p = Paths(Bc)
    args = _faces(a.faces, p.K)
    x0, x1 = p.cholesky(*args), p.woodbury(*args)
    rel = float(((x0 - x1).norm(dim=1) / x0.norm(dim=1)).max())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{m.name}: K={p.K} coefficients, L={p.L} landmarks, {a.faces} random faces, float32, "
          f"torch threads {torch.get_num_threads()}, loadavg {load:.2f}; best of {a.repeats}")
    print(f"largest relative difference of the two solutions: {rel:.2e}")
    for chunk in (64, a.faces):
        tc, tw = _time(p.cholesky, args, chunk, a.repeats), _time(p.woodbury, args, chunk, a.repeats)
        print(f"chunks of {chunk:5d}: per-face Cholesky {tc:7.1f} ms, Woodbury {tw:7.1f} ms per {a.faces} faces "
              f"-> {tc / tw:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
