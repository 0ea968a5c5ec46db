"""
The reference of adaptive contrast (Mescheder et al. 2017, section 3.3): a Gaussian
with the guide's own moments, conditioned on the latents a group depends on.
"""

import torch

__all__ = ["conditional_gaussian"]


def conditional_gaussian(draws, up_draws=None, mode=True):
    r"""
    The Gaussian ``r`` of adaptive contrast from draws on dim 0, conditioned on
    ``up_draws`` (upstream latents, or ``None``). Returns ``whiten(u, up)``,
    mapping draws to ``L^{-1}(u - E_r[u | up])``, and ``log |det L|``. The
    covariance is full when there are at least four draws per dimension of
    (upstream, group), diagonal and unconditional otherwise (``mode=True``), or as
    forced by ``mode="full"`` / ``"diagonal"``.

    With joint mean and covariance of (upstream, group) the conditional is
    :math:`r(u \mid up) = N(\mu_u + A (up - \mu_{up}), S)`, with
    :math:`A = C_{u,up} C_{up,up}^{-1}` and :math:`S` the Schur complement
    :math:`C_{u,u} - A C_{up,u}`.
    """
    k, d = draws.shape[0], draws.shape[-1]
    d_up = 0 if up_draws is None else up_draws.shape[-1]
    if mode is True:
        # a full covariance needs comfortably more draws than dimensions
        mode = "full" if k >= 4 * (d + d_up) and d + d_up > 1 else "diagonal"
    if mode == "diagonal":
        loc = draws.mean(0, keepdim=True)
        std = (draws - loc).pow(2).mean(0, keepdim=True).clamp_min(1e-12).sqrt()
        return (lambda u, up: (u - loc) / std), std.log().sum(-1)
    if d_up:
        shape = torch.broadcast_shapes(draws.shape[:-1], up_draws.shape[:-1])
        joint = torch.cat([up_draws.expand(shape + (d_up,)), draws.expand(shape + (d,))], -1)
    else:
        joint = draws
    loc = joint.mean(0, keepdim=True)
    centred = (joint - loc).movedim(0, -2)  # (..., k, D)
    cov = centred.transpose(-1, -2) @ centred / k
    jitter = 1e-6 * cov.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True).clamp_min(1e-12)
    cov = cov + torch.diag_embed(jitter.expand(cov.shape[:-1]))
    loc_up, loc_u = loc[..., :d_up], loc[..., d_up:]
    cov_uu = cov[..., d_up:, d_up:]
    if d_up:
        cov_upup = cov[..., :d_up, :d_up]
        cov_upu = cov[..., :d_up, d_up:]
        gain = torch.linalg.solve(cov_upup, cov_upu)  # C_up,up^-1 C_up,u: (..., d_up, d)
        cov_uu = cov_uu - cov_upu.transpose(-1, -2) @ gain
        gain = gain.unsqueeze(0)
    chol = torch.linalg.cholesky(cov_uu).unsqueeze(0)

    def whiten(u, up):
        centred = u - loc_u
        if d_up:
            shift = ((up - loc_up).unsqueeze(-2) @ gain).squeeze(-2)
            centred = centred - shift
        tri = chol.expand(centred.shape[:-1] + chol.shape[-2:])
        return torch.linalg.solve_triangular(tri, centred.unsqueeze(-1), upper=False).squeeze(-1)

    return whiten, chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
