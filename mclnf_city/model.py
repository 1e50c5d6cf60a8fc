"""The city model: one trainable *active slot* plus frozen finished blocks.

All blocks share one architecture, so the model holds a single trainable `BlockField`
(the active slot) that is reset from θ_shared when a block starts. Finished blocks are
frozen copies (no grad, no optimizer state) read from the `CityStore` on demand into a
small LRU cache, so memory is bounded by the active block and the blocks the current
rays need, not by the size of the city. Only the active slot is in `state_dict`.

Rendering a ray: uniform samples on the ray's segment inside the city box, one
importance pass, every sample routed to the block whose region holds it (see
`_module_keys` for who owns what while training), one compositing pass, and the
far-field colour of the block where the ray leaves the city for what remains.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterator, List, Literal, Optional, Tuple, Type

import torch
from torch import Tensor
from torch.nn import Parameter

from nerfstudio.cameras.rays import RayBundle, RaySamples
from nerfstudio.model_components.losses import distortion_loss
from nerfstudio.model_components.renderers import DepthRenderer
from nerfstudio.model_components.ray_samplers import PDFSampler, UniformSampler
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.utils import colormaps

from mclnf_city import cpu_allocator
from mclnf_city.fields import BlockField, BlockFieldSpec, compact_block_state, resolve_implementation
from mclnf_city.fisher import exact_fisher, last_layer_fisher
from mclnf_city.partition import BlockPartition
from mclnf_city.rendering import composite, route
from mclnf_city.store import CityStore

NO_MODULE, ACTIVE = -1, -2


@dataclass
class PointValues:
    """What the city's fields say at sample points (leading shape [...]): density [..., 1]; rgb
    [..., 3] when directions were given; with features (FIM-NeRF), the active slot's density and
    colour last-layer inputs [h; 1], zero where another block answers."""

    density: Tensor
    rgb: Optional[Tensor] = None
    density_in: Optional[Tensor] = None
    color_in: Optional[Tensor] = None

    def reshape(self, *shape: int) -> "PointValues":
        return PointValues(*(None if v is None else v.reshape(*shape, -1) for v in (self.density, self.rgb, self.density_in, self.color_in)))


@dataclass
class CityModelConfig(ModelConfig):
    """Block-partitioned city model (MCL-NF)."""

    _target: Type = field(default_factory=lambda: CityModel)
    enable_collider: bool = False
    """Unused: the model clips rays to the city box itself."""
    field: BlockFieldSpec = field(default_factory=BlockFieldSpec)
    """Architecture of every block (hash grid, heads, appearance embedding)."""
    implementation: Literal["tcnn", "torch"] = "tcnn"
    """tcnn when tiny-cuda-nn is importable and the device is CUDA, else torch (a notice is printed)."""
    num_coarse_samples: int = 32
    """Uniform samples per ray inside the city box (density only, no gradient)."""
    num_fine_samples: int = 32
    """Importance samples per ray, drawn from the coarse weights (rendered with the coarse ones)."""
    max_loaded_blocks: int = 64
    """Finished blocks kept in memory at once (least recently used are dropped and re-read). It must hold the blocks one training batch touches, or every step re-reads them from disk (4.8x slower steps at 8 in a 64-block city: tools/bench/scale.py); a block is about 3 MB."""
    eval_num_rays_per_chunk: int = 4096
    """Rays rendered at once when rendering whole images."""
    distortion_loss_mult: float = 0.0
    """Weight of mip-NeRF 360's distortion loss on the rendering weights (nerfstudio's), over the ray's segment in the city box: it pulls each ray's weight together into few surfaces instead of fog (0: off)."""


class BlockCache:
    """Finished blocks, frozen, read from the store on demand, least recently used dropped."""

    def __init__(self, store: CityStore, make_field, capacity: int):
        self.store, self.make_field, self.capacity = store, make_field, max(1, capacity)
        self._blocks: "OrderedDict[int, BlockField]" = OrderedDict()

    def put(self, b: int, module: BlockField) -> None:
        self._blocks[b] = module
        self._blocks.move_to_end(b)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def get(self, b: int, device) -> BlockField:
        if b in self._blocks:
            self._blocks.move_to_end(b)
            return self._blocks[b]
        state = compact_block_state(self.store.load_block(b))
        # A block keeps the embeddings of its own training images: the size comes from the block
        # itself. Its random init is overwritten: build it without touching the stream's random numbers.
        with torch.random.fork_rng(devices=[]):
            module = self.make_field(len(state["image_ids"]))
        module.load_block_state(state, what=f"block {b} ({self.store.root})")
        self.put(b, freeze(module).to(device))
        return self._blocks[b]

    def drop(self, b: int) -> None:
        self._blocks.pop(b, None)

    def loaded(self) -> List[int]:
        return list(self._blocks)


def freeze(module: BlockField) -> BlockField:
    module.eval()
    module.requires_grad_(False)
    return module


class CityModel(Model):
    """See module docstring. Built by `CityPipeline`, which passes the partition and store."""

    config: CityModelConfig

    def populate_modules(self):
        super().populate_modules()
        self.collider = None
        self.partition: BlockPartition = self.kwargs["partition"]
        self.store: CityStore = self.kwargs["store"]
        self.prior: Dict[str, Tensor] = self.kwargs["prior"]
        self.block_image_masks: Dict[int, Tensor] = self.kwargs["block_image_masks"]
        device = self.kwargs.get("device", "cpu")
        if torch.device(device).type == "cpu":
            cpu_allocator.keep_freed_memory()
        impl = resolve_implementation(self.config.implementation, device)
        self.spec = self.config.field
        self.active = BlockField(self.spec, self.num_train_data, impl)
        self.active.load_prior(self.prior)
        self.register_buffer("active_block", torch.tensor(-1))
        self.frozen = BlockCache(self.store, lambda num_images: BlockField(self.spec, num_images, impl), self.config.max_loaded_blocks)
        self.done_blocks = set(self.store.done_blocks())
        self._expanded = self.partition.expanded_boxes().float()
        self.uniform_sampler = UniformSampler(num_samples=self.config.num_coarse_samples)
        self.pdf_sampler = PDFSampler(num_samples=self.config.num_fine_samples)
        self.depth_renderer = DepthRenderer(method="expected")
        self.solo_block: Optional[int] = None
        # Blocks the viewer hides: left out of rendered images (they render like empty space).
        # Never applied while training, nor inside `for_evaluation` (evaluation, reports).
        self.hidden_blocks: FrozenSet[int] = frozenset()
        self._evaluating = False
        self.fisher_features = False  # set by the pipeline when FIM-NeRF is on

    # ------------------------------------------------------------------ stream
    def start_block(self, b: int) -> None:
        """Reset the active slot to θ_shared and place it on block b."""
        self.active.load_prior(self.prior)
        self.active.set_geometry(
            b,
            self.partition.rotation.float(),
            self.partition.origin.float(),
            self._expanded[b],
            self.block_image_masks[b],
        )
        self.active_block.fill_(b)

    def block_finished(self, b: int) -> None:
        """Block b answers from now on, with the weights the store holds (read on first use):
        never the active slot, which after a resume may hold θ_shared or other weights."""
        self.frozen.drop(b)
        self.done_blocks.add(b)

    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        # The per-image appearance embeddings have their own optimizer (`--optimizers.appearance`,
        # lr 0 in the presets): at the field's rate they soak up colour that novel views,
        # rendered with the mean embedding, never get back.
        named = dict(self.active.named_parameters())
        groups = {"fields": [p for k, p in named.items() if not k.startswith("appearance.")]}
        if self.active.appearance is not None:
            groups["appearance"] = list(self.active.appearance.parameters())
        return groups

    @contextmanager
    def for_evaluation(self) -> Iterator[None]:
        """Render for metrics: every block whatever the viewer hides (metrics and checks must not
        depend on it), and no surface normals (6 density queries per ray that no metric uses).

        Flags rather than clearing `hidden_blocks`, so a viewer click meanwhile is not lost.
        """
        before, self._evaluating = self._evaluating, True
        try:
            yield
        finally:
            self._evaluating = before

    # ------------------------------------------------------------------ routing
    def _module_keys(self, owners: Tensor) -> Tensor:
        """Which module evaluates each sample: a finished block id, ACTIVE, or NO_MODULE.

        With `solo_block` set, only that finished block answers, for its own region (used to
        check that a block renders bit-identically later). Otherwise finished blocks always
        answer for their own region. While training, the active slot
        answers for every other sample too (its contracted outer space explains what the
        unfinished blocks will later hold); when rendering, only for its own region.
        When rendering, blocks in `hidden_blocks` (the viewer's choice) answer for nothing.
        """
        keys = torch.full_like(owners, NO_MODULE)
        if self.solo_block is not None:  # one block alone: its own region, nothing else
            b = self.solo_block
            key = ACTIVE if b == int(self.active_block) and b not in self.done_blocks else b
            return torch.where(owners == b, torch.full_like(owners, key), keys)
        if self.done_blocks:
            done = torch.tensor(sorted(self.done_blocks), device=owners.device)
            is_done = torch.isin(owners, done)
            keys = torch.where(is_done, owners, keys)
        else:
            is_done = torch.zeros_like(owners, dtype=torch.bool)
        a = int(self.active_block)
        if a >= 0:
            mine = ~is_done if self.training else (owners == a) & ~is_done
            keys = torch.where(mine, torch.full_like(owners, ACTIVE), keys)
        hidden = self.hidden_blocks  # one read: the viewer's thread may replace the set meanwhile
        if hidden and not self.training and not self._evaluating:
            is_hidden = torch.isin(owners, torch.tensor(sorted(hidden), device=owners.device))
            keys = torch.where(is_hidden, torch.full_like(owners, NO_MODULE), keys)
        return keys

    def _module(self, key: int, device) -> Optional[BlockField]:
        if key == ACTIVE:
            return self.active
        if key == NO_MODULE:
            return None
        return self.frozen.get(key, device)

    def _query(self, ray_samples: RaySamples, with_rgb: bool, with_features: bool = False) -> PointValues:
        positions = ray_samples.frustums.get_positions()
        cams = ray_samples.camera_indices
        values = self._values_at(
            positions.reshape(-1, 3),
            ray_samples.frustums.directions.reshape(-1, 3) if with_rgb else None,
            cams.reshape(-1) if cams is not None else None,
            with_features,
        )
        return values.reshape(*positions.shape[:-1])

    def density_at(self, points: Tensor) -> Tensor:
        """Density [N, 1] of the city at world points [N, 3] (nerfstudio's frame), each point
        answered by the block that owns it (empty space outside every finished block)."""
        return self._values_at(points, None, None).density

    def radiance_at(self, points: Tensor, directions: Tensor) -> Tensor:
        """Colour [N, 3] seen at world points [N, 3] along unit `directions` [N, 3], with the
        mean appearance (as novel views are rendered)."""
        return self._values_at(points, directions, None).rgb

    def _values_at(
        self, points: Tensor, directions: Optional[Tensor], cams: Optional[Tensor], with_features: bool = False
    ) -> PointValues:
        """Route world points [N, 3] to their modules and gather what they say (`PointValues`)."""
        keys = self._module_keys(self.partition.locate(points))
        widths = (self.spec.hidden_dim + 1, self.spec.hidden_dim_color + 1)

        def evaluate(module: BlockField, idx: Tensor):
            with torch.set_grad_enabled(torch.is_grad_enabled() and module is self.active):
                if directions is None:
                    return (module.density(points[idx])[0],)
                density, rgb, *hidden = module.radiance(points[idx], directions[idx], None if cams is None else cams[idx])
                if not with_features:
                    return density, rgb
                return (density, rgb) + tuple(self._last_layer_inputs(module, h, w) for h, w in zip(hidden, widths))

        dims = (1,) if directions is None else (1, 3) + widths if with_features else (1, 3)
        return PointValues(*route(keys, lambda k: self._module(k, points.device), evaluate, dims, points))

    def _last_layer_inputs(self, module: BlockField, hidden: Tensor, width: int) -> Tensor:
        """[h; 1] for the active slot; zeros for a frozen block (it holds no active parameter)."""
        if module is self.active:
            return torch.cat([hidden.detach(), torch.ones_like(hidden[:, :1])], dim=-1)
        return torch.zeros(len(hidden), width, dtype=hidden.dtype, device=hidden.device)

    @torch.no_grad()
    def _surface_normals(self, points: Tensor) -> Tensor:
        """Unit normals [N, 3] at surface points: minus the density gradient (central differences).

        Only for rendering (ns-export pointcloud, the viewer): 6 density queries per ray.
        """
        eps = float(self.partition.x_edges[1] - self.partition.x_edges[0]) / (2 * self.spec.max_res)
        offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
        probes = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # [N, 6, 3] in city units
        density = self.density_at(probes.reshape(-1, 3)).reshape(-1, 6)
        grad = density[:, :3] - density[:, 3:]
        return -torch.nn.functional.normalize(grad, dim=-1)

    def _background(self, origins: Tensor, directions: Tensor, far: Tensor, with_features: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Far-field colour [R, 3] from the block (or active slot) where each ray leaves the city,
        and with_features its last layer's input [h; 1] (zero where a frozen block answers; else None)."""
        exit_points = origins + directions * far[:, None]
        owners = self.partition.block_of_xy(exit_points)
        if self.solo_block is not None:
            owners = torch.full_like(owners, self.solo_block)
        keys = self._module_keys(owners)
        width = self.spec.far_field_hidden_dim + 1

        def evaluate(module: BlockField, idx: Tensor):
            with torch.set_grad_enabled(torch.is_grad_enabled() and module is self.active):
                rgb, hidden = module.far_field_radiance(directions[idx])
                return (rgb, self._last_layer_inputs(module, hidden, width)) if with_features else (rgb,)

        dims = (3, width) if with_features else (3,)
        rgb, *far_in = route(keys, lambda k: self._module(k, origins.device), evaluate, dims, origins)
        return rgb, (far_in[0] if far_in else None)

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        origins, directions = ray_bundle.origins, ray_bundle.directions
        # A block alone is sampled inside its own region, so its renders depend on nothing but the
        # block (not on the city box, which grows with the city).
        solo_box = None if self.solo_block is None else self.partition.regions()[self.solo_block]
        near, far, hit = self.partition.city_segment(origins, directions, solo_box)
        ray_bundle.nears = near[:, None]
        ray_bundle.fars = torch.maximum(far, near + 1e-6)[:, None]
        coarse = self.uniform_sampler(ray_bundle)
        with torch.no_grad():
            coarse_weights = coarse.get_weights(self._query(coarse, with_rgb=False).density)
        fine = self.pdf_sampler(ray_bundle, coarse, coarse_weights)
        with_features = self.training and self.fisher_features
        values = self._query(fine, with_rgb=True, with_features=with_features)
        density, sample_rgb = values.density, values.rgb
        weights = fine.get_weights(density) * hit[:, None, None]
        background, far_in = self._background(origins, directions, far, with_features)
        rgb, accumulation = composite(weights, sample_rgb, background)
        depth = self.depth_renderer(weights=weights, ray_samples=fine)
        outputs = {"rgb": rgb, "accumulation": accumulation, "depth": depth}
        if self.training and self.config.distortion_loss_mult > 0:
            outputs["distortion"] = distortion_loss([weights], [fine])
        if with_features:  # what FIM-NeRF's closed-form score needs (CityModel.fisher_scores)
            outputs["fisher_inputs"] = dict(
                weights=weights.detach(), sample_rgb=sample_rgb.detach(), density=density.detach(),
                deltas=fine.deltas, density_in=values.density_in, color_in=values.color_in,
                background=background.detach(), far_in=far_in, hit=hit.to(density),
            )
        if not self.training and not self._evaluating:  # normals in [0, 1], as nerfstudio's exporter and viewer expect
            normals = self._surface_normals(origins + directions * depth)
            outputs["normals"] = (normals + 1.0) / 2.0
        return outputs

    def get_rgba_image(self, outputs: Dict[str, Tensor], output_name: str = "rgb") -> Tensor:
        """Alpha is the accumulated density: far-field (sky) pixels are transparent to exporters."""
        acc = outputs[output_name.replace("rgb", "accumulation")]
        return torch.cat([outputs[output_name], acc.reshape(*outputs[output_name].shape[:-1], 1)], dim=-1)

    # ------------------------------------------------------------------ losses and metrics
    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        mse = torch.mean((outputs["rgb"] - _rgb(batch["image"]).to(outputs["rgb"])) ** 2)
        return {"psnr": -10.0 * torch.log10(mse.detach().clamp_min(1e-10))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        """Mean squared error, each ray weighted by batch["ray_weights"] (FIM-NeRF) when given."""
        gt = _rgb(batch["image"]).to(outputs["rgb"])
        per_ray = torch.mean((outputs["rgb"] - gt) ** 2, dim=-1)
        weights = batch.get("ray_weights")
        losses = {"rgb_loss": torch.mean(per_ray if weights is None else per_ray * weights.to(per_ray))}
        if "distortion" in outputs:
            losses["distortion_loss"] = self.config.distortion_loss_mult * outputs["distortion"]
        return losses

    def fisher_scores(self, outputs: Dict[str, Tensor], batch: Dict, exact: bool = False) -> Tensor:
        """FIM-NeRF score of every training ray [R] for the active slot (see mclnf_city/fisher.py)."""
        gt = _rgb(batch["image"]).to(outputs["rgb"])
        if exact:
            per_ray = torch.mean((outputs["rgb"] - gt) ** 2, dim=-1)
            return exact_fisher(per_ray, list(self.active.parameters()))
        return last_layer_fisher(outputs["rgb"].detach() - gt, **outputs["fisher_inputs"])

    def get_image_metrics_and_images(self, outputs, batch) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        from mclnf_city.metrics import image_metrics

        gt = _rgb(batch["image"]).to(outputs["rgb"])
        metrics = image_metrics(outputs["rgb"], gt)
        images = {
            "img": torch.cat([gt, outputs["rgb"]], dim=1),
            "accumulation": colormaps.apply_colormap(outputs["accumulation"]),
            "depth": colormaps.apply_depth_colormap(outputs["depth"], accumulation=outputs["accumulation"]),
        }
        return metrics, images


def _rgb(image: Tensor) -> Tensor:
    """Drop an alpha channel if the capture has one (our captures are opaque photographs)."""
    return image[..., :3] if image.shape[-1] == 4 else image

