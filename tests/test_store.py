"""The block store: strict round trips, checksums, atomic writes, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from mclnf_city.fields import BlockField, BlockFieldSpec
from mclnf_city.partition import BlockPartition
from mclnf_city.store import DONE, EMPTY, WAITING, CityStore, StoreError

SPEC = BlockFieldSpec(num_levels=4, max_res=64, log2_hashmap_size=10, hidden_dim=16, hidden_dim_color=16, appearance_embedding_dim=4)


def _partition() -> BlockPartition:
    f64 = torch.float64
    return BlockPartition(torch.eye(3, dtype=f64), torch.zeros(3, dtype=f64), torch.tensor([0.0, 1, 2], dtype=f64),
                          torch.tensor([0.0, 1], dtype=f64), (0.0, 1.0), 0.1, [1, 0])


def _store_with_block(tmp_path):
    store = CityStore(tmp_path / "city")
    store.create(_partition(), {}, {"num_train_images": 5})
    field = BlockField(SPEC, 5)
    store.write_block(1, field.state_dict(), steps=10, metrics={"psnr": 20.0})
    return store, field


def test_round_trip_is_exact_and_strict(tmp_path):
    store, field = _store_with_block(tmp_path)
    reopened = CityStore(tmp_path / "city")
    assert reopened.status(1) == DONE and reopened.status(0) == WAITING
    loaded = BlockField(SPEC, 5)
    loaded.load_block_state(reopened.load_block(1), what="block 1")
    for k, v in field.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert reopened.partition().to_dict() == _partition().to_dict()
    # a block of another architecture is a loud error, not a silent partial load
    other = BlockField(BlockFieldSpec(num_levels=5, max_res=64, log2_hashmap_size=10, hidden_dim=16, hidden_dim_color=16), 5)
    with pytest.raises(ValueError, match="block 1"):
        other.load_block_state(reopened.load_block(1), what="block 1")
    state = reopened.load_block(1)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected"):
        loaded.load_block_state(state, what="block 1")


def test_corrupted_block_is_detected(tmp_path):
    store, _ = _store_with_block(tmp_path)
    path = store.root / store.block(1)["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"block 1: file corrupted .*block_001\.pt"):
        CityStore(store.root).load_block(1)
    with pytest.raises(StoreError, match="corrupted"):
        CityStore(store.root).verify()


def test_missing_block_is_detected(tmp_path):
    store, _ = _store_with_block(tmp_path)
    (store.root / store.block(1)["file"]).unlink()
    with pytest.raises(StoreError, match="block 1: file missing"):
        CityStore(store.root).load_block(1)
    with pytest.raises(StoreError, match="not finished"):
        CityStore(store.root).load_block(0)
    with pytest.raises(StoreError, match="not in the manifest"):
        CityStore(store.root).load_block(7)


def test_broken_manifest_is_a_clear_error(tmp_path):
    store, _ = _store_with_block(tmp_path)
    store.manifest_path.write_text("{ not json")
    with pytest.raises(StoreError, match="manifest is not valid JSON"):
        CityStore(store.root)


def test_writes_leave_no_temp_files(tmp_path):
    store, _ = _store_with_block(tmp_path)
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["blocks"]["1"]["metrics"]["at_finish"]["psnr"] == 20.0


def test_empty_blocks_are_recorded(tmp_path):
    store = CityStore(tmp_path / "city")
    store.create(_partition(), {0: "3 training rays < 1000"}, {})
    assert CityStore(store.root).status(0) == EMPTY
    assert "3 training rays" in CityStore(store.root).block(0)["reason"]


def test_prior_round_trip_is_strict(tmp_path):
    store = CityStore(tmp_path / "city")
    store.create(_partition(), {}, {})
    field = BlockField(SPEC, 5)
    store.write_prior(field.prior_state(), source="test")
    again = BlockField(SPEC, 5)
    again.load_prior(CityStore(store.root).load_prior())
    for k, v in field.named_parameters():
        assert torch.equal(v, dict(again.named_parameters())[k])
    bad = field.prior_state()
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="missing"):
        again.load_prior(bad)


@pytest.mark.parametrize("escape", ["../../outside.pt", "/tmp/outside.pt", "blocks/../../outside.pt", "symlink"])
def test_manifest_paths_must_stay_inside_the_store(tmp_path, escape):
    """A crafted manifest cannot make the store read (or a grown run link) files outside it."""
    store, _ = _store_with_block(tmp_path)
    outside = tmp_path / "outside.pt"
    outside.write_bytes((store.root / store.block(1)["file"]).read_bytes())
    if escape == "symlink":
        (store.root / "blocks" / "evil.pt").symlink_to(outside)
        escape = "blocks/evil.pt"
    manifest = json.loads(store.manifest_path.read_text())
    manifest["blocks"]["1"]["file"] = escape
    store.manifest_path.write_text(json.dumps(manifest))
    crafted = CityStore(store.root)
    for read in (lambda: crafted.load_block(1), crafted.verify, crafted.files):
        with pytest.raises(StoreError, match=r"block 1: .*outside the store"):
            read()


def test_an_old_block_version_outside_the_store_is_refused(tmp_path):
    store, _ = _store_with_block(tmp_path)
    manifest = json.loads(store.manifest_path.read_text())
    manifest["blocks"]["1"]["versions"] = [{"file": "../../etc/passwd", "version": 1}]
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"block 1 version 1: .*outside the store"):
        CityStore(store.root).files()


def test_a_reader_between_prior_writes_never_sees_a_checksum_error(tmp_path, monkeypatch):
    """The prior file is written under a new name and the manifest switch is the commit point:
    a reader that opened the manifest before a new prior was written still loads the old one."""
    store = CityStore(tmp_path / "city")
    store.create(_partition(), {}, {})
    first, second = BlockField(SPEC, 5).prior_state(), BlockField(SPEC, 5).prior_state()
    store.write_prior(first, source="first")
    reader = CityStore(store.root)  # read the manifest now
    commits = []
    monkeypatch.setattr(CityStore, "_update", lambda self, change: commits.append(change))  # killed before the commit
    store.write_prior(second, source="second")
    assert len(commits) == 1
    for k, v in reader.load_prior().items():
        assert torch.equal(v, first[k])
    monkeypatch.undo()
    store.write_prior(second, source="second")
    for k, v in CityStore(store.root).load_prior().items():
        assert torch.equal(v, second[k])
    assert {p.relative_to(store.root).as_posix() for p in store.root.glob("prior*.pt")} <= set(CityStore(store.root).files())
