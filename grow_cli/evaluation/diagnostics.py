"""Layer-wise geometry of the residual stream: movement, convergence, block influence,
angular distance between layer blocks, and a PCA view of the trajectory (spec §2).

Indexing. A model with L decoder layers has L + 1 residual-stream states: S_0 = the embedding
output (the spec's h_{-1}) and S_{l+1} = the output of layer l (the spec's h_l), all PRE-norm
(the final RMSNorm would mix the norm into every comparison). Layer l maps S_l to S_{l+1}.

* movement of layer l:  d_l = 1 - (1 + cos(S_l, S_{l+1})) / 2 = (1 - cos) / 2, in [0, 1],
  with cos averaged over every evaluated token (d is affine in cos, so this equals the mean
  per-token movement).
* convergence:  C_model = 1 - Σ_{l>=1} max(0, d_l - d_{l-1}) / Σ_{l>=1} |d_l - d_{l-1}|; 1 when
  movement never increases with depth (and for a flat profile, where the ratio is 0/0).
  The spec numbers its layers 0..L, so its L is our L - 1.
* block influence of layer l (ShortGPT):  BI_l = 1 - E[cos(S_l, S_{l+1})] = 2 · d_l.
* angular distance of the block of n layers starting at l (layer pruning):
  (1/π) · arccos(cos(S_l[T], S_{l+n}[T])) at each sequence's last token T, averaged over
  sequences; reported for n = 1..L, l = 0..L-n.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def movement(mean_cos: Sequence[float]) -> list[float]:
    """d_l from the mean cosine between consecutive states."""
    return [1.0 - (1.0 + c) / 2.0 for c in mean_cos]


def block_influence(mean_cos: Sequence[float]) -> list[float]:
    """BI_l = 1 - E[cos(S_l, S_{l+1})]."""
    return [1.0 - c for c in mean_cos]


def convergence(moves: Sequence[float]) -> float:
    """C_model of a movement profile (1 = movement decreases monotonically with depth)."""
    steps = [b - a for a, b in zip(moves[:-1], moves[1:])]
    total = sum(abs(step) for step in steps)
    if total == 0.0:
        return 1.0
    return 1.0 - sum(max(0.0, step) for step in steps) / total


def blocks_from_pairs(pairwise: Sequence[Sequence[float]]) -> list[list[float]]:
    """Angular distance per block size: row n-1 lists distance(S_l, S_{l+n}) for l = 0..L-n."""
    count = len(pairwise)
    return [[pairwise[l][l + n] for l in range(count - n)] for n in range(1, count)]


@dataclass(frozen=True)
class StreamGeometry:
    """The residual-stream measures of one model (see the module docstring)."""

    mean_cos: list[float]
    movement: list[float]
    convergence: float
    block_influence: list[float]
    angular_distance: list[list[float]]
    tokens: int
    sequences: int

    def to_json(self) -> dict:
        return {
            "movement": self.movement,
            "convergence": self.convergence,
            "block_influence": self.block_influence,
            "angular_distance": self.angular_distance,
            "geometry_tokens": self.tokens,
            "geometry_sequences": self.sequences,
        }


class StreamMeter:
    """Accumulates cosine statistics of the residual stream over batches.

    Keeps running sums only ([L] consecutive cosines, [L+1, L+1] last-token angles) plus up to
    `keep_trajectories` last-token trajectories for the PCA plot.
    """

    def __init__(self, num_states: int, keep_trajectories: int = 16):
        self.cos_sum = torch.zeros(num_states - 1, dtype=torch.float64)
        self.angle_sum = torch.zeros(num_states, num_states, dtype=torch.float64)
        self.tokens = 0
        self.sequences = 0
        self.keep = keep_trajectories
        self.trajectories: list[torch.Tensor] = []

    def add(self, states: torch.Tensor) -> None:
        """states: [L + 1, b, s, h] residual stream of full (unpadded) sequences (any dtype;
        measured in float32 one layer pair at a time)."""
        for layer in range(states.size(0) - 1):
            cos = torch.nn.functional.cosine_similarity(states[layer].float(), states[layer + 1].float(), dim=-1)
            self.cos_sum[layer] += float(cos.double().sum())
        self.tokens += states.size(1) * states.size(2)
        last = torch.nn.functional.normalize(states[:, :, -1].float(), dim=-1)  # [L + 1, b, h]
        gram = torch.einsum("ibh,jbh->bij", last, last).clamp(-1.0, 1.0)
        self.angle_sum += (torch.arccos(gram) / math.pi).double().sum(dim=0).cpu()
        self.sequences += states.size(1)
        room = self.keep - sum(t.size(0) for t in self.trajectories)
        if room > 0:
            self.trajectories.append(states[:, :room, -1].transpose(0, 1).float().cpu())  # [b', L + 1, h]

    def result(self) -> StreamGeometry:
        mean_cos = (self.cos_sum / max(self.tokens, 1)).tolist()
        moves = movement(mean_cos)
        pairwise = (self.angle_sum / max(self.sequences, 1)).tolist()
        return StreamGeometry(
            mean_cos=mean_cos,
            movement=moves,
            convergence=convergence(moves),
            block_influence=block_influence(mean_cos),
            angular_distance=blocks_from_pairs(pairwise),
            tokens=self.tokens,
            sequences=self.sequences,
        )

    def trajectory_samples(self) -> torch.Tensor | None:
        """[K, L + 1, h] last-token trajectories kept for the PCA view (None if none)."""
        return torch.cat(self.trajectories) if self.trajectories else None


@dataclass(frozen=True)
class PCAView:
    """Trajectories projected on the top two principal directions of all their points."""

    coords: list[list[list[float]]]  # [sample][state][2]
    explained: list[float]  # variance ratio of the two components

    def to_json(self) -> dict:
        return {"pca_trajectories": self.coords, "pca_explained_variance": self.explained}


def pca_trajectories(samples: torch.Tensor) -> PCAView:
    """PCA of unit-normalised states [K, L + 1, h] (directions, as the cosine measures see them)."""
    points = torch.nn.functional.normalize(samples.double(), dim=-1)
    flat = points.reshape(-1, points.size(-1))
    centered = flat - flat.mean(dim=0, keepdim=True)
    _, singular, right = torch.linalg.svd(centered, full_matrices=False)
    variance = singular.square()
    coords = (centered @ right[:2].T).reshape(points.size(0), points.size(1), -1)
    explained = (variance[:2] / variance.sum().clamp_min(1e-30)).tolist()
    return PCAView(coords=coords.tolist(), explained=explained)
