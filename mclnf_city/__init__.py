"""mclnf-city: city-scale neural fields learned block by block without forgetting (MCL-NF).

Data flow: capture -> `BlockPartition` -> per-block `BlockField`s -> streaming schedule
(`CityPipeline`) -> `CityStore` -> render / eval / export.
"""

from mclnf_city.partition import BlockPartition, estimate_partition, ray_box_intersect
from mclnf_city.store import CityStore, StoreError

__all__ = ["BlockPartition", "estimate_partition", "ray_box_intersect", "CityStore", "StoreError"]
__version__ = "0.1.0"
