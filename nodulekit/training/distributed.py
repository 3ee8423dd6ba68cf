"""Devices and processes: CPU, one GPU, N GPUs with DDP started by nodulekit, or ``torchrun``.

- :func:`plan_devices` turns ``--gpus`` into a :class:`DevicePlan` (``None``: one CUDA device
  when there is one, else the CPU; ``0``: the CPU; ``N``: N CUDA devices, a clear error when
  fewer are visible). ``cpu_processes=N`` is the CPU test mode: N processes on gloo.
- :func:`launch` runs ``fn(ctx, *args)`` in every process: directly for one process; under
  ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT`` set) in the
  current process, which joins the group from the environment; otherwise it starts N processes
  itself with ``torch.multiprocessing.spawn`` (NCCL on GPUs, gloo on CPU).
- :class:`DistContext` is what a process knows: rank, world size, device, and the few
  collectives the engine needs. Only rank 0 (``ctx.is_main``) writes logs and checkpoints.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from nodulekit.errors import NodulekitError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Collective timeout: the other ranks wait while rank 0 validates and writes checkpoints.
GROUP_TIMEOUT_MIN = 60


@dataclass(frozen=True)
class DevicePlan:
    """Where training runs: ``kind`` "cpu" or "cuda", and how many processes (one per GPU)."""

    kind: str
    world_size: int

    @property
    def backend(self) -> str:
        return "nccl" if self.kind == "cuda" else "gloo"


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_devices(gpus: int | None = None, *, cpu_processes: int = 1) -> DevicePlan:
    """The device plan for ``--gpus`` (see the module docstring); honours ``torchrun``."""
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        kind = "cuda" if (gpus is None or gpus > 0) and cuda_device_count() > 0 else "cpu"
        return DevicePlan(kind, world)
    available = cuda_device_count()
    if gpus is None:
        return DevicePlan("cuda", 1) if available else DevicePlan("cpu", max(1, cpu_processes))
    if gpus < 0:
        raise NodulekitError(f"--gpus {gpus}: expected 0 (CPU) or a positive number of GPUs")
    if gpus == 0:
        return DevicePlan("cpu", max(1, cpu_processes))
    if available < gpus:
        seen = "no CUDA device is visible" if available == 0 else f"only {available} CUDA device(s) are visible"
        raise NodulekitError(f"--gpus {gpus}: {seen} (CUDA_VISIBLE_DEVICES="
                             f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use --gpus {available}")
    return DevicePlan("cuda", gpus)


def under_torchrun() -> bool:
    """True when the torchrun/torch.distributed.launch environment variables are all set."""
    return all(var in os.environ for var in TORCHRUN_VARS)


@dataclass(frozen=True)
class DistContext:
    """One process's view: rank, local rank, world size and device."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any_true(self, flag: bool) -> bool:
        """True when ``flag`` is true on any process (one tiny all-reduce)."""
        if not self.distributed:
            return flag
        tensor = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item() > 0)

    def sum_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over processes (a copy)."""
        out = tensor.detach().clone()
        if self.distributed:
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (picklable objects)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` in rank order (on every process)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


def single_process_context(kind: str = "cpu") -> DistContext:
    device = torch.device("cuda", torch.cuda.current_device()) if kind == "cuda" else torch.device("cpu")
    return DistContext(0, 0, 1, device)


def free_port() -> int:
    """A free TCP port on localhost for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(fn: Callable[..., Any], plan: DevicePlan, *args: Any) -> Any:
    """Run ``fn(ctx, *args)`` in every process of ``plan``; returns rank 0's result where it can.

    With spawned processes the result is not returned (None): rank 0 writes what the caller
    needs to disk (run.json). A failure in a process becomes one :class:`NodulekitError`.
    """
    if under_torchrun():
        with torchrun_group(plan) as ctx:
            return fn(ctx, *args)
    if plan.world_size == 1:
        return fn(single_process_context(plan.kind), *args)
    return _spawn(fn, plan, args)


def _spawn(fn: Callable[..., Any], plan: DevicePlan, args: tuple[Any, ...]) -> None:
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(free_port())
    previous = signal.getsignal(signal.SIGINT)
    # Ctrl-C reaches every process of the group: the workers checkpoint and stop at the same
    # step, so the parent only waits (a second Ctrl-C interrupts it).
    signal.signal(signal.SIGINT, _second_interrupt_raises())
    try:
        mp.spawn(_spawned_entry, args=(fn, plan, args), nprocs=plan.world_size, join=True)
    except mp.ProcessRaisedException as error:
        last = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
        raise NodulekitError(f"training process {error.error_index} failed: {last}") from None
    except mp.ProcessExitedException as error:
        raise NodulekitError(f"training process {error.error_index} exited with code {error.exit_code}") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def _second_interrupt_raises() -> Callable[[int, Any], None]:
    seen = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        seen["count"] += 1
        if seen["count"] > 1:
            raise KeyboardInterrupt

    return handler


def _spawned_entry(rank: int, fn: Callable[..., Any], plan: DevicePlan, args: tuple[Any, ...]) -> None:
    if plan.kind == "cpu":  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.world_size))
    _run_in_group(fn, plan.kind, plan.backend, args, rank=rank, local_rank=rank, world_size=plan.world_size)


def _run_in_group(fn: Callable[..., Any], kind: str, backend: str, args: tuple[Any, ...], *, rank: int,
                  local_rank: int, world_size: int) -> Any:
    with process_group(kind, backend, rank=rank, local_rank=local_rank, world_size=world_size) as ctx:
        return fn(ctx, *args)


@contextlib.contextmanager
def process_group(kind: str, backend: str, *, rank: int, local_rank: int, world_size: int) -> Iterator[DistContext]:
    """Join the process group (``MASTER_ADDR``/``MASTER_PORT`` from the environment); leave it at exit."""
    if kind == "cuda":
        if local_rank >= cuda_device_count():
            raise NodulekitError(f"process with LOCAL_RANK {local_rank} has no GPU ({cuda_device_count()} visible)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    init_kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size,
                                   "timeout": timedelta(minutes=GROUP_TIMEOUT_MIN)}
    if kind == "cuda":
        init_kwargs["device_id"] = device
    dist.init_process_group(**init_kwargs)
    try:
        yield DistContext(rank, local_rank, world_size, device)
    finally:
        dist.destroy_process_group()


def torchrun_group(plan: DevicePlan) -> contextlib.AbstractContextManager[DistContext]:
    """The process group of a process started by torchrun (ranks from its environment)."""
    return process_group(plan.kind, plan.backend, rank=int(os.environ["RANK"]), local_rank=int(os.environ["LOCAL_RANK"]),
                         world_size=int(os.environ["WORLD_SIZE"]))
