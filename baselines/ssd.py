"""SSD (Fang et al., "Soft Separation and Distillation: Toward Global Uniformity in
Federated Unsupervised Learning", ICCV 2025), adapted to video clips.

On top of alignment + uniformity (baselines/align_uniform.py), each client k adds:

- Dimension-scaled regularisation (DSR, "soft separation"). One random orthonormal basis
  Q (d, d) from ``basis_seed`` (shared by all clients) and disjoint index sets S_k of
  ⌊d / K⌋ dimensions per client; B_k = Q with the columns S_k multiplied by √scale
  (scale = 10). With z (N, d) the l2-normalised projector outputs of one view:

      target = normalize(stopgrad(z · B_k · B_kᵀ))        (row-wise)
      L_DSR  = ||z − target||_F / N                        (averaged over the two views)

- Projector distillation (PD), on the raw encoder feature z_enc and projector output
  z_proj (both (N, d)), temperature T = 0.5, no stop-gradient on either side:

      L_PD = KL(softmax(z_proj / T) || softmax(z_enc / T))   (batch mean, averaged over views)

    L = L_align + 1.0 · L_unif + 1.0 · L_DSR + 0.1 · L_PD

S_k is tied to the client's id in the split manifest (the runner calls
:meth:`SSD.set_client_context`); the official code (hc-fang/ssd) assigns it by the
client's position in the round's sample instead. See docs/methods/ssd.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.align_uniform import AlignUniform
from benchmark.registry import register_method


def random_orthonormal_basis(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q (dim, dim) float64 orthonormal, perm (dim,) int64) drawn from ``seed`` alone.

    Q is the QR factor of a Gaussian matrix with the signs fixed (diag(R) > 0), so it is
    unique for the draw; perm is the random order in which dimensions are dealt to clients.
    """
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(dim, generator=gen)
    gauss = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q, perm


def scaled_dimensions(perm: torch.Tensor, client_id: int, num_clients: int, dims_per_client: int) -> torch.Tensor:
    """S_k: the slice [k·m, (k+1)·m) of the shared permutation (m = dims_per_client); disjoint across k."""
    if not 0 <= client_id < num_clients:
        raise ValueError(f"SSD: client_id={client_id} is outside [0, num_clients={num_clients})")
    if dims_per_client < 1 or dims_per_client * num_clients > perm.numel():
        raise ValueError(
            f"SSD: {num_clients} clients × {dims_per_client} scaled dimensions do not fit in d={perm.numel()}; "
            "expected 1 ≤ method.params.scaled_dims ≤ d // num_clients"
        )
    return perm[client_id * dims_per_client : (client_id + 1) * dims_per_client].clone()


def scaled_basis(q: torch.Tensor, dims: torch.Tensor, scale: float) -> torch.Tensor:
    """B_k (d, d): Q with the columns ``dims`` multiplied by √scale."""
    b = q.clone()
    b[:, dims] *= math.sqrt(scale)
    return b


def dsr_target(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """normalize(stopgrad(z · B · Bᵀ)) row-wise; z (N, d), basis (d, d) → (N, d)."""
    return F.normalize((z @ basis @ basis.T).detach(), dim=1)


def dsr_loss(z: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """||z − dsr_target(z, B)||_F / N for z (N, d)."""
    return torch.linalg.matrix_norm(z - dsr_target(z, basis), ord="fro") / z.shape[0]


def pd_loss(z_proj: torch.Tensor, z_enc: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """KL(softmax(z_proj/T) || softmax(z_enc/T)), summed over d and averaged over the N rows.

    Both inputs keep their gradients (as in the official code).
    """
    log_p_enc = F.log_softmax(z_enc / temperature, dim=1)
    log_p_proj = F.log_softmax(z_proj / temperature, dim=1)
    return F.kl_div(log_p_enc, log_p_proj, reduction="batchmean", log_target=True)


@register_method("ssd")
class SSD(AlignUniform):
    """SSD; params: ``hidden_dim``, ``uniform_coeff``, ``dsr_coeff``, ``pd_coeff``, ``scale``,
    ``temperature``, ``basis_seed`` (shared by all clients), ``scaled_dims`` (None: ⌊d/K⌋)."""

    pretext = "ssd"

    def __init__(
        self,
        backbone: nn.Module,
        exchange: str | None = None,
        hidden_dim: int = 2048,
        uniform_coeff: float = 1.0,
        dsr_coeff: float = 1.0,
        pd_coeff: float = 0.1,
        scale: float = 10.0,
        temperature: float = 0.5,
        basis_seed: int = 0,
        scaled_dims: int | None = None,
        **params,
    ):
        super().__init__(backbone, exchange=exchange, hidden_dim=hidden_dim, uniform_coeff=uniform_coeff, **params)
        if scale <= 0:
            raise ValueError(f"method.params.scale={scale}: expected a positive number (the paper uses 10)")
        if temperature <= 0:
            raise ValueError(
                f"method.params.temperature={temperature}: expected a positive number (the paper uses 0.5)"
            )
        self.dsr_coeff = float(dsr_coeff)
        self.pd_coeff = float(pd_coeff)
        self.scale = float(scale)
        self.temperature = float(temperature)
        self.basis_seed = int(basis_seed)
        self.scaled_dims_param = scaled_dims
        self.client_id: int | None = None
        self.scaled_dims: torch.Tensor | None = None
        # Not persistent: B_k is derived from (basis_seed, client_id) and never exchanged.
        self.register_buffer("basis", torch.empty(0), persistent=False)

    def set_client_context(self, client_id: int, num_clients: int) -> None:
        """Build B_k for this client: S_k = the client_id-th block of ⌊d/K⌋ shuffled dims."""
        per_client = self.dim // num_clients if self.scaled_dims_param is None else int(self.scaled_dims_param)
        q, perm = random_orthonormal_basis(self.dim, self.basis_seed)
        dims = scaled_dimensions(perm, int(client_id), int(num_clients), per_client)
        self.client_id = int(client_id)
        self.scaled_dims = dims
        self.basis = scaled_basis(q, dims, self.scale).to(
            device=self.projector[0].weight.device, dtype=self.projector[0].weight.dtype
        )

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.basis.numel() == 0:
            raise RuntimeError(
                "SSD needs set_client_context(client_id, num_clients) before training "
                "(the runner calls it with the client's partition id)"
            )
        x1, x2 = self._views(batch)
        e1, p1 = self.embed(x1)
        e2, p2 = self.embed(x2)
        z1, z2 = F.normalize(p1, dim=1), F.normalize(p2, dim=1)
        align, unif = self.base_losses(z1, z2)
        basis = self.basis.to(z1.dtype)
        dsr = 0.5 * (dsr_loss(z1, basis) + dsr_loss(z2, basis))
        pd = 0.5 * (pd_loss(p1, e1, self.temperature) + pd_loss(p2, e2, self.temperature))
        loss = align + self.uniform_coeff * unif + self.dsr_coeff * dsr + self.pd_coeff * pd
        return loss, {
            "align": float(align.detach()),
            "uniform": float(unif.detach()),
            "dsr": float(dsr.detach()),
            "pd": float(pd.detach()),
        }
