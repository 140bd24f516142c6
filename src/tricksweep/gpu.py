"""GPU memory as a Ray resource, the out-of-memory policy, memory given back, NVML sampling.

    parse_size("12GiB")                       # 12288 (MiB)
    layout = DeviceLayout.from_cluster()      # per-GPU memory the nodes advertise
    layout.share(3000, cpus=1)                # {'CPU': 1, 'gpu_memory_mib': 3000, 'GPU': 0.0214}

**The resource.** Each node advertises ``gpu_memory_mib``: the memory of all its GPUs, one unit
per MiB (``ray start --resources`` in cluster.yaml, ``ray.init(resources=...)`` for local Ray).
MiB because nvidia-smi and torch report MiB, and Ray keeps resource amounts in fixed point
(1/10000 of a unit): MiB amounts stay small exact integers, where bytes (8.6e10 for 80 GiB) would not.

**The fraction.** Ray custom resources count per node, not per device, and only a GPU request
makes Ray set ``CUDA_VISIBLE_DEVICES``. So a trial asking for ``M`` MiB also asks for the GPU
fraction ``M / D`` (rounded up to Ray's 1/10000), ``D`` the memory of the smallest GPU the
cluster advertises: trials that share one device never ask for more than it holds, and the
memory resource keeps the node's total honest. On nodes that advertise ``gpu_memory_mib`` and
no GPU (the tests' stand-in for a GPU on a CPU machine) the node's amount is one device and no
GPU is requested.

**Out of memory.** ``gpu_shares.MemoryShares`` wraps the sweep's scheduler (ASHA or FIFO). A trial that
ends with CUDA out-of-memory is given twice its share (fewer co-tenants), up to a whole device,
and Tune restarts it from its last checkpoint; the share is changed with ``Trial.update_resources``
while the failed trial is between its failure and its requeue, the same call Ray's
``ResourceChangingScheduler`` makes on a paused trial (that scheduler reacts to results only, not
to errors, and refuses ``reuse_actors``). Such a retry does not count against ``max_failures``.
A trial out of memory on a whole device ends as ``infeasible``.

**auto.** The first trial of a configuration shape (every sampled value but the floats and the
seed: model, width, depth, batch size, optimizer...) runs on a whole device; its first epoch's
peak (``torch.cuda.max_memory_reserved``, plus the CUDA context and a margin) becomes the need
of every later trial of that shape. The first epoch's peak, not a one-step probe, because the
engine knows nothing of a trainable's internals (a probe would need a second entry point in every
trainable), and the first epoch also covers validation and the optimizer's state; the cost is
that the first trial of each shape holds a whole GPU. An underestimate is an OOM, handled as above.
"""

from __future__ import annotations

import gc
import math
import os
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any

RESOURCE = "gpu_memory_mib"
SHARE_ENV = "TRICKSWEEP_GPU_MEMORY_MIB"  # a trial's share in its worker (what the fraction enforces on a GPU)
UNITS = {"MiB": 1, "GiB": 1024, "TiB": 1024 * 1024}
# Memory a process uses beyond torch's allocator: the CUDA context, cuBLAS/cuDNN workspaces.
CONTEXT_MIB = 512
MARGIN = 1.1  # on a measured peak: allocator fragmentation varies between runs
ROUND_MIB = 64
# Torch's CUDA OOM; Ray's own OutOfMemoryError (host memory, its OOM killer) is not one.
_CUDA_OOM = re.compile(r"CUDA out of memory|CUDA error: out of memory|torch(\.cuda)?\.OutOfMemoryError")


def parse_size(text: str) -> int:
    """A memory size (``12GiB``, ``800MiB``, ``1.5GiB``) in MiB, rounded up; ValueError naming the rule."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*", str(text))
    if not match:
        raise ValueError("must be `auto` or a size such as 12GiB or 800MiB")
    number, unit = float(match[1]), match[2]
    if unit not in UNITS:
        raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)} (binary units, as nvidia-smi and torch "
                         f"report memory)")
    mib = math.ceil(number * UNITS[unit])
    if mib < 1:
        raise ValueError("must be at least 1MiB")
    return mib


def is_out_of_memory(text: str) -> bool:
    """Whether an error (its text or traceback) is CUDA running out of memory."""
    return bool(_CUDA_OOM.search(text or ""))


def need_from_peak(peak_reserved_mib: float) -> int:
    """The share a trial needs, from its measured allocator peak: context and margin added, rounded up."""
    return int(math.ceil((peak_reserved_mib * MARGIN + CONTEXT_MIB) / ROUND_MIB) * ROUND_MIB)


def shape_key(config: dict[str, Any]) -> str:
    """What decides a trial's memory, as a key: every sampled value but floats (rates, probabilities)
    and the seed."""
    def walk(value: Any, prefix: str) -> list[tuple[str, str]]:
        if isinstance(value, dict):
            return [item for key, child in sorted(value.items()) for item in walk(child, f"{prefix}{key}.")]
        if isinstance(value, float) or prefix == "seed.":
            return []
        return [(prefix.rstrip("."), repr(value))]

    return ";".join(f"{key}={value}" for key, value in walk(config, ""))


def local_gpu_memory_mib() -> int:
    """This machine's GPUs' memory in MiB (0 without a GPU or NVML): what local Ray advertises.
    Read through NVML, not torch: a CUDA context in the driver would take memory from the trials.
    Only the GPUs in CUDA_VISIBLE_DEVICES count when it is set, as Ray counts them."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            if visible is not None:
                wanted = {v.strip() for v in visible.split(",") if v.strip()}
                handles = [h for h in handles if str(pynvml.nvmlDeviceGetIndex(h)) in wanted
                           or pynvml.nvmlDeviceGetUUID(h) in wanted]
            return sum(int(pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20) for h in handles)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML library, no driver: no GPU to advertise
        return 0


@dataclass(frozen=True)
class DeviceLayout:
    """What the cluster advertises: the smallest device's memory and whether devices are real GPUs."""

    device_mib: int
    gpus: bool  # False: nodes with gpu_memory_mib and no GPU (a stand-in on CPU machines)

    @classmethod
    def from_nodes(cls, nodes: list[dict[str, Any]]) -> DeviceLayout | None:
        """From ``ray.nodes()``; None when no live node advertises the resource."""
        devices = []
        for node in nodes:
            resources = node.get("Resources", {}) if node.get("Alive", True) else {}
            if resources.get(RESOURCE):
                gpus = resources.get("GPU", 0)
                devices.append((int(resources[RESOURCE] / gpus) if gpus else int(resources[RESOURCE]), gpus > 0))
        if not devices:
            return None
        return cls(min(mib for mib, _ in devices), all(gpu for _, gpu in devices))

    @classmethod
    def from_cluster(cls) -> DeviceLayout | None:
        import ray

        return cls.from_nodes(ray.nodes())

    def fraction(self, mib: int) -> float:
        return min(1.0, math.ceil(mib / self.device_mib * 10000) / 10000)

    def share(self, mib: int, *, cpus: float, custom: dict[str, float] | None = None) -> dict[str, float]:
        """The resources of a trial that needs ``mib`` (at most one device)."""
        mib = min(mib, self.device_mib)
        resources = {"CPU": cpus, RESOURCE: float(mib), **(custom or {})}
        if self.gpus:
            resources["GPU"] = self.fraction(mib)
        return resources


# -- in the worker ---------------------------------------------------------------------------


def release_memory() -> None:
    """Give the previous trial's GPU memory back (a reused actor): its tensors collected, torch's
    cached blocks returned to the driver, the peak counter reset for this trial's measurement.
    Nothing to do in a process that never used CUDA (nor one that never imported torch)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()  # tensors in reference cycles hold device memory until collected
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def limit_to_share(share_mib: int) -> None:
    """Hold this process to its share on a real GPU: torch raises OOM past it, instead of the
    trial crowding out its co-tenants."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory // 2**20
    torch.cuda.set_per_process_memory_fraction(max(0.01, min(1.0, (share_mib - CONTEXT_MIB) / total)))


def allocator_peak() -> dict[str, float]:
    """This process's allocator peak so far (MiB): what ``auto`` sizes a shape by."""
    import torch

    return {"gpu_memory_peak_mib": torch.cuda.max_memory_reserved() / 2**20}


class UsageSampler:
    """GPU utilisation and device memory sampled by NVML on a thread of its own, read per epoch.

    ``UsageSampler.start()`` returns None where NVML or a GPU is absent: then nothing is logged."""

    def __init__(self, handle: Any, index: int, every_s: float):
        import pynvml

        self._handle = handle
        self.index = index
        self.total_mib = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20
        self.every_s = every_s
        self._lock = threading.Lock()
        self._util: list[float] = []
        self._used: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tricksweep-nvml", daemon=True)

    @classmethod
    def start(cls, every_s: float = 0.5) -> UsageSampler | None:
        try:
            import pynvml  # the nvidia-ml-py package

            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
            handle = (pynvml.nvmlDeviceGetHandleByIndex(int(visible)) if visible.isdigit()
                      else pynvml.nvmlDeviceGetHandleByUUID(visible))
            index = pynvml.nvmlDeviceGetIndex(handle)
        except Exception:  # noqa: BLE001 - no NVML library, no driver, no device: nothing to sample
            return None
        sampler = cls(handle, index, every_s)
        sampler._thread.start()
        return sampler

    def _run(self) -> None:
        import pynvml

        while not self._stop.wait(self.every_s):
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
                used = pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20
            except pynvml.NVMLError:
                continue
            with self._lock:
                self._util.append(float(util))
                self._used.append(float(used))

    def epoch_metrics(self) -> dict[str, float]:
        """Since the last call: mean utilisation (%), peak device memory used (MiB, all processes),
        this process's allocator peak (MiB) and the device's index."""
        with self._lock:
            util, used, self._util, self._used = self._util, self._used, [], []
        out = {"gpu_index": float(self.index), **allocator_peak()}
        if util:
            out["gpu_utilization"] = sum(util) / len(util)
            out["gpu_device_memory_used_mib"] = max(used)
            out["gpu_device_memory_total_mib"] = self.total_mib
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.every_s + 1)
