import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from write_faults import file_size_limit, fill_up, hidden_leftovers, tmpfs

from saekit.errors import ArtifactError
from saekit.sae import build
from saekit.training.checkpoint import Checkpoint, load_checkpoint, restore, save_checkpoint
from saekit.training.checksummed import write_checksummed
from saekit.training.optim import make_optimizer
from saekit.version import __version__

CORRUPTED = r"is corrupted: its content does not match its sha256 checksum"


def _sae():
    return build("topk", d_in=4, d_sae=8, k=2, seed=0)


def _checkpoint() -> Checkpoint:
    sae = _sae()
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
        scales={"s": 2.5},
        fingerprint={"run": "test"},
    )


def _saved(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "c.safetensors", _checkpoint())


def _hand_made(path: Path, *, tensors=None, meta=None, raw_meta: str | None = None) -> Path:
    """Rewrite the checkpoint at ``path`` with edited tensors or metadata and a valid checksum, as a
    hand edit that recomputed the checksum (or a bug of a writer) would."""
    from saekit.training.checksummed import read_checksummed

    original = json.loads(read_checksummed(path, "checkpoint").metadata["saekit_checkpoint"])
    body = load_file(path)
    new_tensors = tensors(body) if tensors else body
    text = raw_meta if raw_meta is not None else json.dumps(meta(original) if meta else original)
    return write_checksummed(path, new_tensors, {"saekit_checkpoint": text})


def test_round_trip_keeps_every_tensor_and_setting(tmp_path):
    ckpt = _checkpoint()
    path = save_checkpoint(tmp_path / "c.safetensors", ckpt)
    back = load_checkpoint(path)
    assert back.step == 7 and back.scales == {"s": 2.5} and back.fingerprint == {"run": "test"}
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



def test_a_checkpoint_travels_between_ranks_as_bytes():
    """What a rank sends rank 0 (safetensors bytes, no pickle) reads back equal; damaged bytes are named."""
    from saekit.training.checkpoint import checkpoint_bytes, checkpoint_of_bytes

    ckpt = _checkpoint()
    back = checkpoint_of_bytes(checkpoint_bytes(ckpt), "the part of rank 1")
    assert back.step == 7 and back.fingerprint == {"run": "test"} and torch.equal(back.dead_counters[0], torch.arange(8))
    assert all(torch.equal(back.sae_states[0][k], v) for k, v in ckpt.sae_states[0].items())
    assert back.optimizer_states[0]["param_groups"] == ckpt.optimizer_states[0]["param_groups"]
    with pytest.raises(ArtifactError, match="the part of rank 1 is truncated or corrupted"):
        checkpoint_of_bytes(checkpoint_bytes(ckpt)[:-3], "the part of rank 1")

def test_truncated_checkpoint_is_named(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupted .*: its header describes"):
        load_checkpoint(path)


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(ArtifactError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.safetensors")


def _flip_tensor_byte(data: bytes) -> bytes:
    return data[:-100] + bytes([data[-100] ^ 0x01]) + data[-99:]


def _edit(pattern: bytes, replacement: bytes):
    def edit(data: bytes) -> bytes:
        edited, n = re.subn(pattern, replacement, data, count=1)
        assert n == 1 and len(edited) == len(data)
        return edited

    return edit


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_flip_tensor_byte, id="one bit of a tensor"),
        pytest.param(_edit(rb'(\\"step\\": )7', rb"\g<1>9"), id="the step"),
        pytest.param(_edit(rb'(\\"s\\": )2\.5', rb"\g<1>9.5"), id="a normalisation factor"),
        pytest.param(_edit(rb'(\\"eps\\": )1e-08', rb"\g<1>1e-01"), id="an optimiser setting"),
        pytest.param(_edit(rb'("saekit_sha256":")[0-9a-f]', rb"\g<1>z"), id="the checksum itself"),
    ],
)
def test_a_changed_byte_anywhere_is_refused_as_corrupted(tmp_path, change):
    """Edited optimiser state, scale or step would resume silently with other weights, and flipped
    bits would end in a misleading divergence: any change is named as corruption, with the file."""
    path = _saved(tmp_path)
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(ArtifactError, match=rf"checkpoint {path} {CORRUPTED}") as caught:
        load_checkpoint(path)
    assert "diverge" not in str(caught.value)


def test_a_checkpoint_without_its_checksum_is_refused_as_corrupted(tmp_path):
    path = _saved(tmp_path)
    save_file(load_file(path), str(path), metadata={"saekit_checkpoint": json.dumps(json.loads(_meta_of(path)))})
    with pytest.raises(ArtifactError, match=rf"checkpoint {path} is corrupted: its content carries no checksum"):
        load_checkpoint(path)


def _meta_of(path: Path) -> str:
    from saekit.training.checksummed import read_checksummed

    return read_checksummed(path, "checkpoint").metadata["saekit_checkpoint"]


def test_a_checkpoint_of_an_older_saekit_is_named(tmp_path):
    """Format 1 (no checksum, no saekit version) is what saekit wrote before checkpoints carried one."""
    path = tmp_path / "c.safetensors"
    old = {"format_version": 1, "step": 7, "n_saes": 1, "optimizers": [], "info": {}}
    save_file({"rng": torch.get_rng_state()}, str(path), metadata={"saekit_checkpoint": json.dumps(old)})
    with pytest.raises(ArtifactError, match=rf"written by an older saekit in checkpoint format 1; this saekit \({__version__}\) reads format 2"):
        load_checkpoint(path)


def test_a_checkpoint_of_a_newer_saekit_is_named(tmp_path):
    path = _hand_made(_saved(tmp_path), meta=lambda m: {**m, "format_version": 3, "saekit_version": "9.0.0"})
    with pytest.raises(ArtifactError, match=r"written by saekit 9.0.0 in checkpoint format 3; .* finish that run with the saekit that started it"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{not json", "it is not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (lambda m: {k: v for k, v in m.items() if k != "step"}, r"missing keys \['step'\], unknown keys \[\]"),
        (lambda m: {**m, "info": {}}, r"missing keys \[\], unknown keys \['info'\]"),
        (lambda m: {**m, "step": "7"}, "'step' must be an integer >= 0, got '7'"),
        (lambda m: {**m, "step": -1}, "'step' must be an integer >= 0, got -1"),
        (lambda m: {**m, "n_saes": 0}, "'n_saes' must be an integer >= 1"),
        (lambda m: {**m, "scales": {"s": -2.5}}, "'scales' must map each site to a positive, finite factor"),
        (lambda m: {**m, "scales": ["s"]}, "'scales' must map each site"),
        (lambda m: {**m, "optimizers": []}, "'optimizers' must be a list of 1 optimiser states"),
        (lambda m: {**m, "optimizers": [{"param_groups": [{"params": ["a"]}], "scalars": {}}]}, r"'optimizers\[0\].param_groups' must be"),
        (lambda m: {**m, "optimizers": [{"param_groups": m["optimizers"][0]["param_groups"], "scalars": {"x": {}}}]}, r"'optimizers\[0\].scalars' must map parameter numbers to settings"),
        (lambda m: {**m, "optimizers": [{"param_groups": []}]}, r"'optimizers\[0\]' must hold exactly 'param_groups' and 'scalars'"),
        (lambda m: {**m, "fingerprint": "run"}, "'fingerprint' must be a JSON object"),
    ],
)
def test_corrupt_metadata_is_named(tmp_path, meta, message):
    """Metadata with a valid checksum is still checked key by key: no KeyError or TypeError later."""
    path = _saved(tmp_path)
    _hand_made(path, **({"raw_meta": meta} if isinstance(meta, str) else {"meta": meta}))
    with pytest.raises(ArtifactError, match=rf"checkpoint {path} has corrupt metadata: {message}"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (lambda t: {**t, "foo": torch.zeros(1)}, "holds a tensor 'foo' that is not part of a checkpoint of 1 SAE"),
        (lambda t: {**t, "sae.1.W_enc": t["sae.0.W_enc"].clone()}, "holds a tensor 'sae.1.W_enc'"),
        (lambda t: {**t, "opt.0.x.exp_avg": torch.zeros(1)}, "holds a tensor 'opt.0.x.exp_avg'"),
        (lambda t: {k: v for k, v in t.items() if k != "dead.0"}, "is incomplete"),
        (lambda t: {k: v for k, v in t.items() if k != "rng"}, "is incomplete"),
    ],
)
def test_tensors_outside_the_checkpoint_layout_are_named(tmp_path, tensors, message):
    path = _hand_made(_saved(tmp_path), tensors=tensors)
    with pytest.raises(ArtifactError, match=rf"checkpoint {path} {message}"):
        load_checkpoint(path)


def test_a_folder_where_the_checkpoint_should_be_is_named(tmp_path):
    (tmp_path / "c.safetensors").mkdir()
    with pytest.raises(ArtifactError, match="c.safetensors is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_an_empty_checkpoint_is_named(tmp_path):
    (tmp_path / "c.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError, match=r"c.safetensors is empty \(0 bytes\): the file is corrupted"):
        load_checkpoint(tmp_path / "c.safetensors")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02", "too short for a safetensors header"),
        (b"\xff" * 8 + b"{}", "its header claims"),
        (b"\x04\x00\x00\x00\x00\x00\x00\x00{no}", "its header is not valid JSON"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "its header is not a safetensors header"),
    ],
)
def test_a_garbled_header_is_named(tmp_path, data, message):
    (tmp_path / "c.safetensors").write_bytes(data)
    with pytest.raises(ArtifactError, match=rf"c.safetensors is truncated or corrupted \({len(data)} bytes\): {message}"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_a_safetensors_file_that_is_no_checkpoint_is_named(tmp_path):
    save_file({"W": torch.zeros(2)}, str(tmp_path / "c.safetensors"))
    with pytest.raises(ArtifactError, match="is a safetensors file but not a saekit checkpoint"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    """The write fails part-way at the OS (a file-size limit, EFBIG): named, previous file intact."""
    path = _saved(tmp_path)
    before = path.read_bytes()
    with file_size_limit(len(before) // 2), pytest.raises(ArtifactError, match=rf"cannot write {path}: File too large \(EFBIG\)"):
        save_checkpoint(path, _checkpoint())
    assert path.read_bytes() == before
    assert load_checkpoint(path).step == 7
    assert hidden_leftovers(tmp_path) == []


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    with tmpfs(tmp_path / "disk", "size=256k") as disk:
        path = save_checkpoint(disk / "c.safetensors", _checkpoint())
        before = path.read_bytes()
        fill_up(disk, leave=len(before) // 2)
        with pytest.raises(ArtifactError, match=rf"cannot write {path}: No space left on device \(ENOSPC\)"):
            save_checkpoint(path, _checkpoint())
        assert path.read_bytes() == before
        assert hidden_leftovers(disk) == []


def _live():
    sae = _sae()
    return sae, make_optimizer(sae), torch.zeros(8, dtype=torch.int64)


def _replace(ckpt: Checkpoint, **changes) -> Checkpoint:
    import dataclasses

    return dataclasses.replace(ckpt, **changes)


def _with_state(ckpt: Checkpoint, pid: int, **state) -> Checkpoint:
    opt = ckpt.optimizer_states[0]
    new = {**opt, "state": {**opt["state"], pid: {**opt["state"].get(pid, {}), **state}}}
    return _replace(ckpt, optimizer_states=[new])


def _with_group(ckpt: Checkpoint, **settings) -> Checkpoint:
    opt = ckpt.optimizer_states[0]
    return _replace(ckpt, optimizer_states=[{**opt, "param_groups": [{**opt["param_groups"][0], **settings}]}])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: _replace(c, sae_states=[{**c.sae_states[0], "extra": torch.zeros(2)}]), r"SAE 0 has tensors the run does not know: \['extra'\]"),
        (lambda c: _replace(c, sae_states=[{k: v for k, v in c.sae_states[0].items() if k != "W_enc"}]), r"SAE 0 lacks tensors \['W_enc'\]"),
        (lambda c: _replace(c, sae_states=[{**c.sae_states[0], "b_enc": torch.zeros(9)}]), r"SAE 0 tensor 'b_enc' is torch.float32 \[9\], the run's is torch.float32 \[8\]"),
        (lambda c: _replace(c, sae_states=c.sae_states * 2), r"it holds 2 SAE\(s\), the run trains 1"),
        (lambda c: _with_state(c, 0, exp_avg=torch.zeros(3)), r"SAE 0's optimiser exp_avg of parameter 0 is not a float tensor of shape \[4, 8\]"),
        (lambda c: _with_state(c, 0, exp_avg_sq=None), "exp_avg_sq of parameter 0 is not a float tensor"),
        (lambda c: _with_state(c, 9, step=torch.tensor(1.0)), "has state for parameter 9, which none of its groups holds"),
        (lambda c: _with_state(c, 1, extra=torch.zeros(1)), r"state of parameter 1 has \['exp_avg', 'exp_avg_sq', 'extra', 'step'\]"),
        (lambda c: _with_group(c, lr="fast"), "SAE 0's optimiser setting 'lr' is 'fast'"),
        (lambda c: _with_group(c, params=[0, 1]), r"has parameter groups of \[2\] parameters, the run's of \[4\]"),
        (lambda c: _replace(c, dead_counters=[torch.zeros(1, dtype=torch.int64)]), r"dead-latent counter is torch.int64 \[1\], the run's is torch.int64 \[8\]"),
        (lambda c: _replace(c, rng_state=torch.zeros(3, dtype=torch.uint8)), r"the RNG state is torch.uint8 \[3\]"),
    ],
)
def test_restore_names_what_does_not_fit_and_changes_nothing(tmp_path, change, message):
    """Missing tensors would be a torch traceback; an Adam moment of another shape or a one-element
    dead counter would be taken silently (broadcast) and fail later, or never."""
    sae, opt, counter = _live()
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    with pytest.raises(ArtifactError, match=rf"checkpoint {tmp_path} does not fit this run: .*{message}"):
        restore(change(_checkpoint()), tmp_path, [sae], [opt], [counter])
    assert all(torch.equal(before[k], v) for k, v in sae.state_dict().items())
    assert opt.state_dict()["state"] == {} and not counter.any()


def test_restore_puts_a_fitting_checkpoint_in_place(tmp_path):
    ckpt = _checkpoint()
    sae, opt, counter = _live()
    restore(ckpt, tmp_path, [sae], [opt], [counter])
    assert all(torch.equal(ckpt.sae_states[0][k], v) for k, v in sae.state_dict().items())
    assert torch.equal(counter, torch.arange(8))
