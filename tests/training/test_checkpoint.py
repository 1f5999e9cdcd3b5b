import pytest
import torch

from saekit.errors import ArtifactError
from saekit.sae import build
from saekit.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from saekit.training.optim import make_optimizer


def _checkpoint() -> Checkpoint:
    sae = build("topk", d_in=4, d_sae=8, k=2, seed=0)
    opt = make_optimizer(sae)
    loss = sae(torch.randn(3, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    return Checkpoint(
        step=7,
        sae_states=[sae.state_dict()],
        optimizer_states=[opt.state_dict()],
        dead_counters=[torch.arange(8)],
        rng_state=torch.get_rng_state(),
        info={"scales": {"s": 2.5}},
    )


def test_round_trip_keeps_every_tensor_and_setting(tmp_path):
    ckpt = _checkpoint()
    path = save_checkpoint(tmp_path / "c.safetensors", ckpt)
    back = load_checkpoint(path)
    assert back.step == 7 and back.info == {"scales": {"s": 2.5}}
    for name, value in ckpt.sae_states[0].items():
        assert torch.equal(back.sae_states[0][name], value)
    assert torch.equal(back.dead_counters[0], torch.arange(8))
    assert torch.equal(back.rng_state, ckpt.rng_state)
    orig, loaded = ckpt.optimizer_states[0], back.optimizer_states[0]
    assert loaded["param_groups"] == orig["param_groups"]
    for pid, state in orig["state"].items():
        for key, value in state.items():
            assert torch.equal(loaded["state"][pid][key], value)
    # The loaded optimiser state is accepted by a fresh Adam.
    make_optimizer(build("topk", d_in=4, d_sae=8, k=2)).load_state_dict(loaded)


def test_truncated_checkpoint_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "c.safetensors", _checkpoint())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupted"):
        load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_write_is_atomic_old_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.safetensors", _checkpoint())
    before = path.read_bytes()
    import saekit.training.checkpoint as module

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, _checkpoint())
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 7
