"""Per-block fields: one architecture, one instance per block.

A `BlockField` is a multi-resolution hash grid with small density and colour heads
(appearance embedding per training image, as nerfacto has) plus a far-field head that
colours what lies beyond the city box (sky, horizon) from the view direction.

Each block works in its own local coordinates: its expanded box maps to [-1, 1]^3 and
everything beyond is contracted (L-inf scene contraction) into [-2, 2]^3, so the block
can also explain the not-yet-trained space its rays cross, while rendering only ever
queries it inside its own region.

The geometry of a block (frame, box) lives in buffers; the learnable weights are the
parameters. θ_shared (the prior) is exactly the parameter set: `prior_state` and
`load_prior` move it in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

import torch
from torch import Tensor, nn

from nerfstudio.field_components.activations import trunc_exp
from nerfstudio.field_components.encodings import HashEncoding, SHEncoding
from nerfstudio.field_components.mlp import MLP

from mclnf_city import cpu_allocator, hash_grid

_NOTICE_SHOWN = False


def resolve_implementation(requested: Literal["tcnn", "torch"], device: torch.device | str) -> Literal["tcnn", "torch"]:
    """tiny-cuda-nn when asked for, importable and on CUDA; else torch (one notice per process)."""
    global _NOTICE_SHOWN
    chosen: Literal["tcnn", "torch"] = "torch"
    reason = "requested"
    if requested == "tcnn":
        if torch.device(device).type != "cuda":
            reason = "tcnn needs a CUDA device"
        else:
            try:
                import tinycudann  # noqa: F401

                chosen, reason = "tcnn", "requested"
            except ImportError:
                reason = "tinycudann is not installed"
    if not _NOTICE_SHOWN:
        extra = ""
        if chosen == "torch" and torch.device(device).type == "cpu":
            extra = f"; hash grid: {hash_grid.kernel_status()}; memory: {cpu_allocator.status()}"
        print(f"[mclnf-city] field implementation: {chosen} ({reason}){extra}")
        _NOTICE_SHOWN = True
    return chosen


def contract(x: Tensor) -> Tensor:
    """L-inf scene contraction, as nerfstudio's `SceneContraction(order=inf)` (same values): the
    unit cube stays, the rest of space maps into [-2, 2]^3. The max of |x| is cheaper than
    `torch.linalg.norm(ord=inf)` on the CPU."""
    mag = x.abs().amax(dim=-1, keepdim=True)
    return torch.where(mag < 1, x, (2 - 1 / mag) * (x / mag))


def run_mlp(mlp: MLP, x: Tensor) -> Tensor:
    """nerfstudio's `MLP` forward with ReLUs applied in place on the torch path (same values,
    one large tensor fewer per layer to allocate and write); tcnn's fused MLP as it is."""
    if mlp.tcnn_encoding is not None:
        return mlp(x)
    assert not mlp._skip_connections, "skip connections are not used by BlockField"
    last = len(mlp.layers) - 1
    for i, layer in enumerate(mlp.layers):
        x = layer(x)
        act = mlp.activation if i < last else None
        for a in (act, mlp.out_activation if i == last else None):
            if a is not None:
                x = torch.relu_(x) if isinstance(a, nn.ReLU) else a(x)
    return x


@dataclass
class BlockFieldSpec:
    """Architecture of every block (prior, blocks and checkpoints must agree on it)."""

    num_levels: int = 12
    """Hash-grid levels."""
    base_res: int = 16
    """Resolution of the coarsest level, over the block's contracted [0, 1]^3 cube."""
    max_res: int = 1024
    """Resolution of the finest level (the block's own box spans half of it)."""
    log2_hashmap_size: int = 15
    """log2 of the hash table size per level."""
    features_per_level: int = 2
    """Features stored per table entry."""
    hidden_dim: int = 64
    """Width of the density head."""
    geo_feat_dim: int = 15
    """Geometry features passed from the density head to the colour head."""
    hidden_dim_color: int = 64
    """Width of the colour head."""
    appearance_embedding_dim: int = 16
    """Per-image appearance embedding (0 disables it)."""
    far_field_hidden_dim: int = 32
    """Width of the far-field (sky) head."""


def require_same_keys(own: Dict[str, Any], given: Dict[str, Any], problem: str, error: type = ValueError) -> None:
    """Strict loading: `given` must hold exactly the keys of `own`, else `error` names the
    missing and unexpected ones after `problem`."""
    missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))

    def shown(keys):  # a whole hash grid's keys would drown the message
        return str(keys[:8])[:-1] + f", ... {len(keys) - 8} more]" if len(keys) > 8 else str(keys)

    if missing or extra:
        raise error(f"{problem}: missing {shown(missing)}, unexpected {shown(extra)}")


class BlockField(nn.Module):
    """The sub-module of one block."""

    def __init__(self, spec: BlockFieldSpec, num_images: int, implementation: Literal["tcnn", "torch"] = "torch"):
        super().__init__()
        self.spec = spec
        impl = implementation
        growth = (spec.max_res / spec.base_res) ** (1 / max(spec.num_levels - 1, 1))
        self.encoding = HashEncoding(
            num_levels=spec.num_levels,
            min_res=spec.base_res,
            max_res=spec.max_res,
            log2_hashmap_size=spec.log2_hashmap_size,
            features_per_level=spec.features_per_level,
            implementation=impl,
        )
        assert abs(self.encoding.growth_factor - growth) < 1e-6
        # Each head ends in a plain torch Linear, whatever the backend: the inputs of these last
        # layers give FIM-NeRF's closed-form Fisher score (mclnf_city/fisher.py).
        self.density_head = MLP(
            in_dim=self.encoding.get_out_dim(),
            num_layers=1,
            layer_width=spec.hidden_dim,
            out_dim=spec.hidden_dim,
            out_activation=nn.ReLU(),
            implementation=impl,
        )
        self.density_out = nn.Linear(spec.hidden_dim, 1 + spec.geo_feat_dim)
        self.direction_encoding = SHEncoding(levels=4, implementation=impl)
        dim_app = spec.appearance_embedding_dim
        self.appearance = nn.Embedding(num_images, dim_app) if dim_app > 0 else None
        if self.appearance is not None:
            nn.init.zeros_(self.appearance.weight)  # start neutral: unseen test views use the mean
        self.color_head = MLP(
            in_dim=self.direction_encoding.get_out_dim() + spec.geo_feat_dim + dim_app,
            num_layers=2,
            layer_width=spec.hidden_dim_color,
            out_dim=spec.hidden_dim_color,
            activation=nn.ReLU(),
            out_activation=nn.ReLU(),
            implementation=impl,
        )
        self.color_out = nn.Linear(spec.hidden_dim_color, 3)
        self.far_field_head = MLP(
            in_dim=self.direction_encoding.get_out_dim(),
            num_layers=1,
            layer_width=spec.far_field_hidden_dim,
            out_dim=spec.far_field_hidden_dim,
            out_activation=nn.ReLU(),
            implementation=impl,
        )
        self.far_field_out = nn.Linear(spec.far_field_hidden_dim, 3)
        # Block geometry: world -> city rotation, city origin, box centre and half size.
        self.register_buffer("block_id", torch.tensor(-1))
        self.register_buffer("rotation", torch.eye(3))
        self.register_buffer("origin", torch.zeros(3))
        self.register_buffer("box_center", torch.zeros(3))
        self.register_buffer("box_half", torch.ones(3))
        # The training images of the embedding's rows, and which of them belong to the block
        # (their mean embedding renders unseen views). The active slot has a row for every
        # training image; a stored block keeps its own images' rows only (`compact_block_state`).
        self.register_buffer("image_ids", torch.arange(num_images))
        self.register_buffer("image_mask", torch.zeros(num_images, dtype=torch.bool))

    # ----- geometry -----
    def set_geometry(self, block_id: int, rotation: Tensor, origin: Tensor, box: Tensor, image_mask: Tensor) -> None:
        """Place the field on a block: box is its [2, 3] expanded box in the city frame."""
        with torch.no_grad():
            self.block_id.fill_(block_id)
            self.rotation.copy_(rotation)
            self.origin.copy_(origin)
            self.box_center.copy_(box.mean(0))
            self.box_half.copy_((box[1] - box[0]) / 2)
            self.image_mask.copy_(image_mask)

    def local_coordinates(self, positions: Tensor) -> Tensor:
        """World positions -> [0, 1]^3 grid coordinates (expanded box -> [0.25, 0.75])."""
        city = (positions - self.origin) @ self.rotation.T
        local = (city - self.box_center) / self.box_half
        return (contract(local) + 2.0) / 4.0

    # ----- queries -----
    def density(self, positions: Tensor) -> Tuple[Tensor, Tensor]:
        """positions [N, 3] (world) -> density [N, 1], geometry features [N, geo_feat_dim]."""
        density, geo, _ = self._density(positions)
        return density, geo

    def _density(self, positions: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        hidden = run_mlp(self.density_head, hash_grid.encode(self.encoding, self.local_coordinates(positions))).to(positions)
        h = self.density_out(hidden)
        return trunc_exp(h[..., :1] - 1.0), h[..., 1:], hidden

    def forward(self, positions: Tensor, directions: Tensor, camera_indices: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """positions, directions [N, 3]; camera_indices [N] or None -> density [N, 1], rgb [N, 3]."""
        density, rgb, _, _ = self.radiance(positions, directions, camera_indices)
        return density, rgb

    def radiance(self, positions: Tensor, directions: Tensor, camera_indices: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """As `forward`, plus the inputs of the density and colour heads' last layers [N, hidden]."""
        density, geo, density_hidden = self._density(positions)
        d = self._encode_directions(directions)
        parts = [d, geo]
        if self.appearance is not None:
            parts.append(self._embedding(camera_indices, len(positions), positions))
        color_hidden = run_mlp(self.color_head, torch.cat(parts, dim=-1)).to(positions)
        rgb = torch.sigmoid(self.color_out(color_hidden))
        return density, rgb, density_hidden, color_hidden

    def far_field_radiance(self, directions: Tensor) -> Tuple[Tensor, Tensor]:
        """Colour [N, 3] of what lies beyond the city box, seen along unit directions [N, 3], and
        the input of its last layer [N, far_field_hidden_dim] (for the Fisher scores)."""
        hidden = run_mlp(self.far_field_head, self._encode_directions(directions)).to(directions)
        return torch.sigmoid(self.far_field_out(hidden)), hidden

    def _encode_directions(self, directions: Tensor) -> Tensor:
        # tcnn's SH encoding takes directions mapped to [0, 1]; nerfstudio's torch path takes
        # unit vectors as they are (nerfacto feeds both the [0, 1] form, which is wrong on torch).
        if self.direction_encoding.tcnn_encoding is not None:
            return self.direction_encoding((directions + 1.0) / 2.0)
        return self.direction_encoding(directions)

    def _embedding(self, camera_indices: Optional[Tensor], n: int, like: Tensor) -> Tensor:
        assert self.appearance is not None
        if self.training and camera_indices is not None and len(self.image_ids):
            cams = camera_indices.long()
            rows = torch.searchsorted(self.image_ids, cams).clamp(max=len(self.image_ids) - 1)
            own = self.image_ids[rows] == cams
            if bool(own.all()):  # the active slot: a row for every training image
                return self.appearance(rows).to(like)
            return torch.where(own[:, None], self.appearance(rows), self._mean_embedding()).to(like)
        return self._mean_embedding().to(like).expand(n, -1)

    def _mean_embedding(self) -> Tensor:
        """What unseen (test) views get: the mean embedding of the block's own training images."""
        assert self.appearance is not None
        mask = self.image_mask
        return self.appearance.weight[mask].mean(0) if mask.any() else self.appearance.weight.new_zeros(self.appearance.embedding_dim)

    # ----- prior (θ_shared) -----
    # The per-image appearance embedding belongs to a capture, not to the prior: it is left
    # out of θ_shared and starts at zero in every block.
    def prior_state(self) -> Dict[str, Tensor]:
        """The shared learnable weights: what θ_shared is made of."""
        return {k: v.detach().clone() for k, v in self.named_parameters() if not k.startswith("appearance.")}

    def load_prior(self, state: Dict[str, Tensor], source: str = "prior") -> None:
        """Reset every parameter to θ_shared, and the appearance embedding to zero (strict)."""
        own = {k: p for k, p in self.named_parameters() if not k.startswith("appearance.")}
        require_same_keys(own, state, f"{source} does not match the block architecture")
        with torch.no_grad():
            for k, p in own.items():
                if p.shape != state[k].shape:
                    raise ValueError(f"{source}: {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
                p.copy_(state[k])
            if self.appearance is not None:
                self.appearance.weight.zero_()

    def block_state(self) -> Dict[str, Tensor]:
        """What a block stores: every weight and its geometry, with its own images' embeddings only."""
        return compact_block_state(self.state_dict())

    def load_block_state(self, state: Dict[str, Tensor], what: str) -> None:
        """Strict load of a full block state (parameters and geometry), with a clear error."""
        if "image_ids" not in state and "image_mask" in state:  # a block file from before image_ids
            state = compact_block_state(state)
        own = self.state_dict()
        require_same_keys(own, state, f"{what} does not match the block architecture")
        for k, v in own.items():
            if v.shape != state[k].shape:
                raise ValueError(f"{what}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")
        self.load_state_dict(state, strict=True)


def compact_block_state(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """A block state with the embedding rows of its own images only (`image_mask`), so that a
    block file does not grow with the capture. Block files written before `image_ids` existed
    (a row for every training image) load through here too; a compact state is returned as is."""
    mask = state["image_mask"].bool()
    if "image_ids" in state and bool(mask.all()):
        return state
    rows = torch.nonzero(mask).flatten()
    out = dict(state)
    out["image_ids"] = state["image_ids"][rows] if "image_ids" in state else rows
    out["image_mask"] = torch.ones(len(rows), dtype=torch.bool)
    if "appearance.weight" in state:
        out["appearance.weight"] = state["appearance.weight"][rows]
    return out
