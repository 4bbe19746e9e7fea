"""Weight sync by broadcast: the first learner's tensors sent straight into the remote env runners'
own tensors over a torch process group of their own (``weight_sync: broadcast``).

RLlib's sync (``object_store``) reads the first learner's state as numpy (bf16 widened to float32),
brings it to the driver through Ray's object store, puts it there again, and every runner reads
and deserializes it, then loads it: three host copies and a serialization per runner. Here:

- **open**: rank 0 (the first learner, or the driver's learner with ``num_learners: 0``) starts a
  ``TCPStore`` on its node, on a port the OS picks; ranks ``1..N`` are the remote env runners in
  worker-index order.
- **join**: every member builds a process group on that store, the same ``generation`` in all:
  ``gloo`` (host tensors: any mix of CPU and GPU members; a GPU tensor is staged through host
  memory, one copy each way, nothing serialized) or ``nccl`` (every member on a GPU of its own,
  ``gpus_per_learner >= 1`` and ``gpus_per_env_runner >= 1``: device to device, NVLink within a node).
  The runners' tensors are the contract (:func:`manifest`: name, shape, dtype of each, sorted by
  name): the first runner's goes to the learner and every other runner, each checks its own against
  it, and a mismatch is a ``ValueError`` naming the tensor.
- **each sync**: small tensors are packed in buckets of one dtype (at most :data:`BUCKET_BYTES`), a
  larger tensor goes alone, one broadcast each, up to three in flight (the next packed while the
  last is on the wire); the sender casts to the runners' dtype (fp32 master weights go out as the
  bf16 the runners sample with: half the bytes), the runners unpack into their own tensors in
  place, which the streaming sampler reads; a tensor alone that is already where and what the
  wire carries is sent from, or received into, without a copy.

A member that dies leaves the group broken: the driver (:class:`WeightBroadcaster`) checks before
each sync that every healthy runner holds the current generation and builds a new group otherwise
(a restarted runner joins with the others); a collective that fails (a runner killed mid-sync, a
runner's error: it drops its end of the group, so the others fail at once instead of waiting) or
times out (:func:`timeout_s`) is reported and that sync goes through RLlib's object store instead.
A runner's error comes back to the driver as a value (:func:`on_runner`): RLlib's ``apply`` ends an
actor whose function raises, and a failed sync must not cost runners that sample fine.
"""

from __future__ import annotations

import datetime
import logging
import math

import torch

logger = logging.getLogger(__name__)

#: Largest bucket of one broadcast (bytes); a larger tensor goes alone, without packing where it is
#: already on the channel's device in the runners' dtype (module docstring).
BUCKET_BYTES = 4 * 2**20
#: Seconds a member waits in a collective (the group's join included) before it fails, unless
#: ``DUPLEXGYM_WEIGHT_SYNC_TIMEOUT_S`` says otherwise (read where Ray starts; its actors inherit it).
TIMEOUT_S = 120.0


def timeout_s() -> float:
    """The collectives' timeout in seconds (:data:`TIMEOUT_S` or the environment's)."""
    import os

    raw = os.environ.get("DUPLEXGYM_WEIGHT_SYNC_TIMEOUT_S")
    try:
        value = float(raw) if raw else TIMEOUT_S
    except ValueError:
        raise ValueError(f"DUPLEXGYM_WEIGHT_SYNC_TIMEOUT_S={raw!r}: not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"DUPLEXGYM_WEIGHT_SYNC_TIMEOUT_S={raw!r}: must be > 0")
    return value


#: One tensor of the contract: ``(name, shape, dtype name)`` (e.g. ``("lm.text_emb.weight", (33, 64), "bfloat16")``).
Entry = tuple[str, tuple[int, ...], str]


def dtype_name(tensor: torch.Tensor) -> str:
    """``"bfloat16"`` for a bf16 tensor (the ``torch`` attribute's name)."""
    return str(tensor.dtype).removeprefix("torch.")


def manifest(tensors: dict[str, torch.Tensor]) -> list[Entry]:
    """The contract of a runner's sync tensors, sorted by name."""
    return [(k, tuple(int(s) for s in v.shape), dtype_name(v)) for k, v in sorted(tensors.items())]


def check_fits(entries: list[Entry], tensors: dict[str, torch.Tensor], who: str) -> None:
    """``ValueError`` naming the first tensor of ``tensors`` that is missing from ``entries``, extra,
    or of another shape (``who``: whose tensors, for the message)."""
    want = {name: shape for name, shape, _ in entries}
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"weight sync: {who}'s tensors do not fit the runners' ({len(missing)} missing, e.g. "
                         f"{missing[:1]}; {len(extra)} unexpected, e.g. {extra[:1]})")
    for name, shape in want.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"weight sync: {who}'s {name} is {tuple(tensors[name].shape)}, the runners' {shape}")


def buckets(entries: list[Entry], limit: int = BUCKET_BYTES) -> list[list[int]]:
    """The broadcasts of one sync: runs of consecutive entries of one dtype, at most ``limit``
    bytes each (a tensor larger than ``limit`` alone). Indices into ``entries``."""
    out: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, shape, name) in enumerate(entries):
        nbytes = math.prod(shape) * getattr(torch, name).itemsize
        if out and name == dtype and size + nbytes <= limit:
            out[-1].append(i)
            size += nbytes
        else:
            out.append([i])
            size, dtype = nbytes, name
    return out


def node_address() -> str:
    """This node's IP address, as Ray knows it (the store's host)."""
    import ray

    return ray.util.get_node_ip_address()


class WeightChannel:
    """One member's end of a broadcast group. Rank 0 calls :meth:`open` first (non-blocking), then
    every member constructs its channel concurrently (the constructor returns once all have joined)."""

    def __init__(self, address: tuple[str, int] | None, rank: int, world: int, backend: str, entries: list[Entry],
                 generation: int, store=None, bucket_bytes: int = BUCKET_BYTES):
        import torch.distributed as dist

        timeout = datetime.timedelta(seconds=timeout_s())
        if store is None:
            store = dist.TCPStore(address[0], int(address[1]), world, is_master=False, timeout=timeout)
        self._store = store  # rank 0's serves the others: it lives as long as the channel
        prefixed = dist.PrefixStore(f"duplexgym-weights/{generation}", store)
        if backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(prefixed, rank, world, options)
        elif backend == "gloo":
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(prefixed, rank, world, timeout)
        else:
            raise ValueError(f"weight sync: unknown backend {backend!r} (gloo | nccl)")
        self.rank, self.world, self.backend, self.generation = rank, world, backend, generation
        self.entries, self.plan = list(entries), buckets(entries, bucket_bytes)

    @staticmethod
    def open(world: int, host: str | None = None):
        """Rank 0's store (``(store, (host, port))``), for ``world`` members in all, on ``host``
        (default: this node's address as Ray knows it)."""
        import torch.distributed as dist

        host = host or node_address()
        store = dist.TCPStore(host, 0, world, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout_s()))
        return store, (host, int(store.port))

    def _broadcast(self, flat: torch.Tensor):
        """Start one broadcast of ``flat`` (rank 0's to everyone's); its work, to ``wait()`` on."""
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        return self.group.broadcast([flat], opts)

    def _direct(self, idx: list[int], tensor: torch.Tensor) -> bool:
        """Whether a bucket is one tensor that goes as it is (on the channel's device, in the
        entry's dtype, contiguous): no packing copy on that side."""
        return (len(idx) == 1 and tensor.device == self.device and tensor.is_contiguous()
                and tensor.dtype == getattr(torch, self.entries[idx[0]][2]))

    def send(self, tensors: dict[str, torch.Tensor]) -> int:
        """Rank 0: every entry's tensor of ``tensors`` (any device and dtype, cast to the entry's), one
        broadcast per bucket, the next bucket packed while the last is on the wire. Returns the bytes
        sent."""
        if self.rank != 0:
            raise RuntimeError("weight sync: only rank 0 sends")
        check_fits(self.entries, tensors, "the learner")
        sent, pending = 0, []
        with torch.no_grad():
            for idx in self.plan:
                dtype = getattr(torch, self.entries[idx[0]][2])
                first = tensors[self.entries[idx[0]][0]].detach()
                if self._direct(idx, first):
                    flat = first.reshape(-1)
                else:
                    flat = torch.cat([tensors[self.entries[i][0]].detach().reshape(-1).to(self.device, dtype)
                                      for i in idx])
                pending.append((self._broadcast(flat), flat))
                sent += flat.numel() * flat.element_size()
                if len(pending) > 2:
                    pending.pop(0)[0].wait()
            for work, _ in pending:
                work.wait()
        return sent

    def receive(self, tensors: dict[str, torch.Tensor]) -> int:
        """Ranks ``1..N``: every bucket received and unpacked into ``tensors`` in place (each on its
        own device; a bucket of one tensor on the channel's device straight into it). Returns the
        bytes received."""
        got, pending = 0, []

        def unpack(work, flat, idx, direct):
            work.wait()
            if not direct:
                sizes = [math.prod(self.entries[i][1]) for i in idx]
                for i, part in zip(idx, flat.split(sizes), strict=True):
                    name, shape, _ = self.entries[i]
                    tensors[name].copy_(part.view(shape))

        with torch.no_grad():
            for idx in self.plan:
                dtype = getattr(torch, self.entries[idx[0]][2])
                first = tensors[self.entries[idx[0]][0]]
                direct = self._direct(idx, first)
                flat = first.view(-1) if direct else torch.empty(
                    sum(math.prod(self.entries[i][1]) for i in idx), dtype=dtype, device=self.device)
                pending.append((self._broadcast(flat), flat, idx, direct))
                got += flat.numel() * flat.element_size()
                if len(pending) > 2:
                    unpack(*pending.pop(0))
            for item in pending:
                unpack(*item)
        return got


def runner_tensors(runner) -> dict[str, torch.Tensor]:
    """An env runner's sync tensors: its RLModule's own (views of the parameters the sampler reads)."""
    return runner._module().sync_state()


class WeightBroadcaster:
    """The driver's side of ``weight_sync: broadcast``: builds the group when the healthy runners
    are not all in the current generation, then runs each sync (the runners wait for the buckets,
    the first learner sends). ``backend``: ``gloo`` or ``nccl`` (module docstring)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.generation = 0
        self.members: list[int] = []  # the remote runners' worker indices in the group (ranks 1..N)

    @staticmethod
    def _call(algo, ids: list[int], fn) -> list:
        """``fn(runner)`` on each runner of ``ids`` (started, not waited for): object refs."""
        actors = algo.env_runner_group._worker_manager.actors()
        return [actors[i].apply.remote(on_runner, fn) for i in ids]

    @staticmethod
    def _results(ids: list[int], refs: list) -> list:
        """The runners' results; an error a runner reported raised here (``ValueError`` as such)."""
        import ray

        out = []
        for idx, result in zip(ids, ray.get(refs, timeout=timeout_s()), strict=True):
            if result[0] == "error":
                cls = ValueError if result[1] == "ValueError" else RuntimeError
                raise cls(f"env runner {idx}: {result[1]}: {result[2]}")
            out.append(result[1])
        return out

    def _current(self, algo, ids: list[int]) -> bool:
        if not ids or ids != self.members:
            return False
        refs = self._call(algo, ids, lambda r: getattr(r, "_weight_channel", None) and r._weight_channel.generation)
        return all(g == self.generation for g in self._results(ids, refs))

    def _build(self, algo, ids: list[int]) -> None:
        from duplexgym.agents.training.checkpoints import on_learners

        self.members, self.generation = [], self.generation + 1
        generation, backend, world = self.generation, self.backend, len(ids) + 1
        entries = self._results(ids[:1], self._call(algo, ids[:1], lambda r: manifest(runner_tensors(r))))[0]
        address = next(a for a in on_learners(algo, lambda learner: learner.open_weight_group(world)) if a)
        refs = [self._call(algo, [i], lambda r, rank=rank: join_runner(r, address, rank, world, backend, entries,
                                                                       generation))[0]
                for rank, i in enumerate(ids, start=1)]
        on_learners(algo, lambda learner: learner.join_weight_group(entries, backend, generation))
        self._results(ids, refs)
        self.members = list(ids)

    def push(self, algo) -> int:
        """One sync into every healthy remote runner (a new group first when needed). Returns the
        bytes sent to each."""
        from duplexgym.agents.training.checkpoints import on_learners

        ids = sorted(algo.env_runner_group.healthy_env_runner_ids())
        if not ids:
            raise RuntimeError("no healthy env runner to sync")
        try:
            if not self._current(algo, ids):
                self._build(algo, ids)
            generation = self.generation
            refs = self._call(algo, ids, lambda r: receive_runner(r, generation))
            sent = max(on_learners(algo, lambda learner: learner.broadcast_weights()))
            got = self._results(ids, refs)
        except BaseException:
            self.members = []  # rebuilt at the next sync
            raise
        if any(g != sent for g in got):
            self.members = []
            raise RuntimeError(f"weight sync: the runners received {got} bytes, the learner sent {sent}")
        return sent


def on_runner(runner, fn):
    """On an env runner: ``("ok", fn(runner))``, or ``("error", type name, message)`` with the
    runner's group end dropped: RLlib's ``apply`` ends an actor whose function raises, and a
    failed sync must not cost a runner that samples fine (the next sync builds a new group)."""
    try:
        return ("ok", fn(runner))
    except Exception as e:  # noqa: BLE001 - reported to the driver, which raises it
        runner._weight_channel = None
        return ("error", type(e).__name__, str(e))


def join_runner(runner, address, rank: int, world: int, backend: str, entries: list[Entry], generation: int) -> None:
    """On an env runner: check its tensors against ``entries``, then join the group (blocks until all have)."""
    targets = runner_tensors(runner)
    check_fits(entries, targets, f"env runner {runner.worker_index}")
    for name, _, want in entries:
        if (own := dtype_name(targets[name])) != want:
            raise ValueError(f"weight sync: env runner {runner.worker_index}'s {name} is {own}, the first runner's {want}")
    runner._weight_channel = None  # the old group's end, if any, goes first
    if backend == "nccl":
        torch.cuda.set_device(runner._module().lm.device)
    runner._weight_channel = WeightChannel(address, rank, world, backend, entries, generation)
    runner._weight_targets = targets  # views of the parameters (every sync loads in place): kept


def receive_runner(runner, generation: int) -> int:
    """On an env runner: one sync's buckets into its tensors. Returns the bytes received."""
    channel = getattr(runner, "_weight_channel", None)
    if channel is None or channel.generation != generation:
        raise RuntimeError(f"weight sync: env runner {runner.worker_index} is not in group {generation}")
    return channel.receive(runner._weight_targets)
