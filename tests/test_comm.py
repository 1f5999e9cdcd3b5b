"""One process's Comm does nothing; the row slices of a distributed batch are equal and cover it."""

import pytest
import torch

from saekit.comm import LOCAL, Comm
from saekit.errors import ConfigError, DistributedError


def test_the_local_collectives_return_their_input():
    t = torch.tensor([1.0, -2.0])
    assert LOCAL.sum_(t) is t and LOCAL.max_(t) is t and LOCAL.min_(t) is t and LOCAL.gather(t) is t and LOCAL.broadcast_(t) is t
    assert torch.equal(t, torch.tensor([1.0, -2.0])) and not LOCAL.distributed
    assert LOCAL.gather_bytes(b"abc") == [b"abc"] and LOCAL.gather_bytes(b"", to_all=True) == [b""]
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.full((2,), 3.0)
    LOCAL.average_grads_([param])
    assert torch.equal(param.grad, torch.full((2,), 3.0))


def test_each_rank_gets_an_equal_slice_and_together_they_cover_the_batch():
    rows = [Comm(rank=r, world_size=4).rows(12) for r in range(4)]
    assert [(s.start, s.stop) for s in rows] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    with pytest.raises(ConfigError, match="a batch of 10 rows does not split evenly over 4 ranks"):
        Comm(rank=0, world_size=4).rows(10)


def test_a_run_outside_torchrun_is_one_process(monkeypatch):
    from saekit.training.distributed import comm_for_run

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert comm_for_run(torch.device("cpu"), 10.0) is LOCAL
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert comm_for_run(torch.device("cpu"), 10.0) is LOCAL


def test_each_rank_of_a_machine_gets_its_own_gpu(monkeypatch):
    from saekit.devices import rank_device

    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert rank_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # a device the user named stays
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert rank_device(torch.device("cuda")) == torch.device("cuda")


def test_failures_within_names_what_torch_distributed_raised_and_passes_the_rest(tmp_path):
    comm = Comm(rank=1, world_size=2)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(DistributedError, match=r"rank 1 of 2: an FSDP gather failed, so another rank died"):
            with comm.failures_within("an FSDP gather"):
                torch.distributed.broadcast(torch.zeros(1), src=3)  # a RuntimeError raised inside torch.distributed
    finally:
        torch.distributed.destroy_process_group()
    with pytest.raises(RuntimeError, match="a bug of the caller's") as caught:
        with comm.failures_within("an FSDP gather"):
            raise RuntimeError("a bug of the caller's")
    assert not isinstance(caught.value, DistributedError)
