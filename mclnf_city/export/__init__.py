"""What users take away from a trained city, via `mclnf-export` (`cli.py`).

- `city.py`: load a trained run (`load_city`), its finished blocks, the output frame.
- `mesh.py`: a crack-free mesh, marching cubes block by block on one global lattice.
- `pointcloud.py`: surface points where camera rays end, with colours and normals.
- `orthomap.py`: a top-down colour and height map.
- `thumbnails.py`: one view of every block, as a contact sheet.
"""

from mclnf_city.export.city import ExportError, LoadedCity, city_to_world, finished_blocks, load_city
from mclnf_city.export.cli import build_parser, main, run
from mclnf_city.export.mesh import CityLattice, LatticeDensity, Mesh, block_meshes, export_mesh, lattice_spacing, march_volume, weld
from mclnf_city.export.orthomap import export_map
from mclnf_city.export.pointcloud import export_pointcloud
from mclnf_city.export.thumbnails import export_thumbnails, look_at_block

__all__ = [
    "CityLattice", "ExportError", "LatticeDensity", "LoadedCity", "Mesh", "block_meshes", "build_parser", "city_to_world",
    "export_map", "export_mesh", "export_pointcloud", "export_thumbnails", "finished_blocks", "lattice_spacing",
    "load_city", "look_at_block", "main", "march_volume", "run", "weld",
]
