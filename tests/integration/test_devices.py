"""Device discovery: /proc parsers, NVML mapping (with a stand-in pynvml), fingerprint, resolution, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from medserve.hardware import cpu as cpu_module
from medserve.hardware.devices import (
    Device,
    Discovery,
    canonical_device_id,
    discover_devices,
    hardware_fingerprint,
    resolve_device,
)
from medserve.hardware.nvidia import compute_features, visible_nvml_indices
from medserve.hardware.report import abbreviate_features, format_bytes, format_discovery
from medserve.values.errors import InvalidConfig

SAPPHIRE_RAPIDS_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
    "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq "
    "pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx "
    "f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced "
    "fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma "
    "clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 "
    "wbnoinvd arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni "
    "avx512_bitalg tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear serialize tsxldtrk "
    "amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities"
)


def _x86_block(processor: int, core: int, physical: int = 0) -> str:
    return (
        f"processor\t: {processor}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        f"model name\t: Intel(R) Xeon(R) Platinum 8480+\nphysical id\t: {physical}\nsiblings\t: 4\n"
        f"core id\t\t: {core}\ncpu cores\t: 2\nflags\t\t: {SAPPHIRE_RAPIDS_FLAGS}\nbogomips\t: 4000.00\n"
    )


X86_CPUINFO = "\n".join(_x86_block(p, core=p // 2) for p in range(4)) + "\n"

ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc \
dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg dcpodp sve2 \
sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svebf16 i8mm bf16 dgh rng bti
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd4f
CPU revision\t: 1

processor\t: 1
BogoMIPS\t: 243.75
Features\t: fp asimd
CPU implementer\t: 0x41
CPU part\t: 0xd4f
"""


def test_parse_x86_cpuinfo() -> None:
    info = cpu_module.parse_cpuinfo(X86_CPUINFO)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert info.logical == 4
    assert info.physical_cores == 2  # two hyperthreads per core
    assert info.vendor == "GenuineIntel"
    assert cpu_module.cpu_features(info.flags) == (
        "sse4_2",
        "avx",
        "f16c",
        "fma",
        "avx2",
        "avx_vnni",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "avx512_fp16",
        "amx_tile",
        "amx_bf16",
        "amx_int8",
    )


def test_parse_arm_cpuinfo() -> None:
    info = cpu_module.parse_cpuinfo(ARM_CPUINFO)
    assert info.model == "Arm implementer 0x41 part 0xd4f"
    assert info.logical == 2
    assert info.physical_cores is None
    assert cpu_module.cpu_features(info.flags) == (
        "asimd",
        "asimdhp",
        "asimddp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
    )


def test_parse_cpuinfo_of_garbage_is_empty_not_an_error() -> None:
    info = cpu_module.parse_cpuinfo("no colon here\n\n")
    assert (info.model, info.logical, info.flags) == ("", 0, frozenset())


def test_meminfo_and_cgroup_parsers() -> None:
    assert cpu_module.parse_meminfo("MemFree: 1 kB\nMemTotal:       24684096 kB\n") == 24684096 * 1024
    assert cpu_module.parse_meminfo("MemFree: 1 kB\n") is None
    assert cpu_module.parse_cgroup_memory_max("max\n") is None
    assert cpu_module.parse_cgroup_memory_max("1073741824\n") == 1 << 30
    assert cpu_module.parse_cgroup_cpu_max("max 100000\n") is None
    assert cpu_module.parse_cgroup_cpu_max("150000 100000\n") == 1.5
    assert cpu_module.parse_cgroup_cpu_max("garbage") is None


def test_probe_cpu_applies_cgroup_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    cgroup.mkdir()
    (proc / "cpuinfo").write_text(X86_CPUINFO)
    (proc / "meminfo").write_text("MemTotal: 8388608 kB\n")
    (cgroup / "cpu.max").write_text("150000 100000\n")
    (cgroup / "memory.max").write_text(str(2 << 30))
    monkeypatch.setattr(cpu_module, "usable_cpus", lambda: 4)
    probe = cpu_module.probe_cpu(proc, cgroup)
    assert probe.problems == ()
    assert probe.cores == 2  # 1.5 CPUs of quota, rounded up
    assert probe.memory_bytes == 2 << 30
    assert probe.details["host_memory_bytes"] == 8 << 30
    assert "amx_tile" in probe.features


def test_probe_cpu_reports_unreadable_files_as_problems(tmp_path: Path) -> None:
    probe = cpu_module.probe_cpu(tmp_path / "missing", tmp_path / "missing")
    assert probe.memory_bytes is None
    assert any("cpuinfo" in p for p in probe.problems)
    assert any("meminfo" in p for p in probe.problems)


def test_visible_nvml_indices_follow_cuda_rules() -> None:
    uuids = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]
    assert visible_nvml_indices(None, uuids) == ([0, 1, 2], None)
    assert visible_nvml_indices("2,0", uuids) == ([2, 0], None)
    assert visible_nvml_indices("GPU-bbbb", uuids) == ([1], None)
    assert visible_nvml_indices("", uuids) == ([], None)
    assert visible_nvml_indices("1,-1,0", uuids) == ([1], None)
    indices, problem = visible_nvml_indices("0,7,1", uuids)
    assert indices == [0]
    assert problem is not None and "'7'" in problem
    indices, problem = visible_nvml_indices("MIG-0c7e-4c0b", uuids)
    assert indices == [] and problem is not None and "MIG instance" in problem


def test_compute_features() -> None:
    assert compute_features((9, 0)) == ("sm_90", "fp16", "int8", "bf16", "tf32", "fp8")
    assert compute_features((7, 0)) == ("sm_70", "fp16")
    assert compute_features(None) == ()


class _NvmlError(Exception):
    def __init__(self, value: int = 999) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_pynvml(gpus: list[tuple[str, int, tuple[int, int]]]) -> types.ModuleType:
    """A stand-in for ``pynvml`` with the calls discovery makes; handles are NVML indices."""
    module: Any = types.ModuleType("pynvml")
    module.NVMLError = _NvmlError
    module.NVML_ERROR_LIBRARY_NOT_FOUND = 12
    module.NVML_ERROR_DRIVER_NOT_LOADED = 9
    module.nvmlInit = lambda: None
    module.nvmlShutdown = lambda: None
    module.nvmlSystemGetDriverVersion = lambda: "570.86.15"
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetName = lambda h: gpus[h][0].encode()  # old bindings return bytes
    module.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}-uuid"
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=gpus[h][1])
    module.nvmlDeviceGetCudaComputeCapability = lambda h: gpus[h][2]
    module.nvmlDeviceGetTotalEnergyConsumption = lambda h: 1000
    module.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000
    return module


def test_discovery_maps_nvml_gpus_to_cuda_ordinals(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = [("NVIDIA A100-SXM4-80GB", 80 << 30, (8, 0)), ("NVIDIA H100 80GB HBM3", 80 << 30, (9, 0))]
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus))
    discovery = discover_devices(environ={"CUDA_VISIBLE_DEVICES": "1"})
    cuda = [d for d in discovery.devices if d.kind == "cuda"]
    assert [d.id for d in cuda] == ["cuda:0"]
    (gpu,) = cuda
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_bytes == 80 << 30
    assert gpu.features[0] == "sm_90" and "fp8" in gpu.features
    assert gpu.details["nvml_index"] == 1
    assert gpu.details["compute_capability"] == "9.0"
    assert gpu.details["energy_counter"] is True
    assert discovery.versions["nvidia_driver"] == "570.86.15"
    ort_cuda = bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(discovery.providers))
    assert ("onnxruntime" in gpu.runtimes) == ort_cuda
    if not ort_cuda:
        with pytest.raises(InvalidConfig, match=r"\(cuda:0 is usable by: "):
            resolve_device("cuda:0", "onnxruntime", discovery)


def test_nvml_without_driver_is_skipped_not_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    module = fake_pynvml([])

    def no_driver() -> None:
        raise _NvmlError(12)

    module.nvmlInit = no_driver  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)
    discovery = discover_devices(environ={})
    assert not any(p.startswith("nvml") for p in discovery.problems)
    assert any(s.startswith("nvml: cannot initialise") for s in discovery.skipped)


def _device(device_id: str, kind: Any, runtimes: tuple[str, ...], **kw: Any) -> Device:
    defaults: dict[str, Any] = {"name": device_id, "memory_bytes": None, "cores": None, "features": ()}
    defaults.update(kw)
    return Device(device_id, kind, runtimes=runtimes, **defaults)


def _machine(**cpu: Any) -> Discovery:
    cpu_kw: dict[str, Any] = {"name": "Xeon 8480+", "cores": 8, "features": ("avx2", "avx512f")}
    cpu_kw.update(cpu)
    return Discovery(
        devices=[
            _device("cpu", "cpu", ("onnxruntime", "torch", "openvino"), **cpu_kw),
            _device("cuda:0", "cuda", ("torch",), name="NVIDIA L4", memory_bytes=24 << 30),
            _device("openvino:GPU.0", "gpu", ("openvino",), name="Intel Arc A770"),
        ],
        providers=["CPUExecutionProvider"],
        problems=[],
        versions={"onnxruntime": "1.20.0", "torch": "2.5.0", "openvino": "2024.5.0"},
    )


def test_fingerprint_is_stable_and_detects_hardware_changes() -> None:
    base = hardware_fingerprint(_machine())
    assert len(base) == 64 and base == hardware_fingerprint(_machine())
    noisy = _machine()
    noisy.problems.append("nvml: something")
    noisy.skipped.append("openvino: not installed")
    noisy.versions["nvidia_driver"] = "999"
    assert hardware_fingerprint(noisy) == base  # problems and drivers do not take part
    assert hardware_fingerprint(_machine(cores=4)) != base
    assert hardware_fingerprint(_machine(features=("avx2",))) != base
    assert hardware_fingerprint(_machine(name="EPYC 9654")) != base
    fewer_gpus = _machine()
    fewer_gpus.devices.pop(1)
    assert hardware_fingerprint(fewer_gpus) != base
    upgraded = _machine()
    upgraded.versions["onnxruntime"] = "1.21.0"
    assert hardware_fingerprint(upgraded) != base


def test_fingerprint_of_this_machine_is_stable() -> None:
    assert hardware_fingerprint(discover_devices()) == hardware_fingerprint(discover_devices())


def test_resolve_device_accepts_engine_spellings() -> None:
    machine = _machine()
    assert resolve_device("cpu", "onnxruntime", machine).id == "cpu"
    assert resolve_device("CUDA", "torch", machine).id == "cuda:0"
    assert resolve_device("cuda:0", "monai_bundle", machine).id == "cuda:0"  # a torch runtime
    assert resolve_device("GPU.0", "openvino", machine).id == "openvino:GPU.0"
    assert resolve_device("CPU", "openvino", machine).id == "cpu"
    assert resolve_device("gpu", "openvino", machine).id == "openvino:GPU.0"  # GPU is GPU.0
    assert resolve_device("AUTO", "openvino", machine).id == "openvino:GPU.0"
    assert resolve_device("AUTO:CPU,GPU.0", "openvino", machine).id == "cpu"
    assert resolve_device("AUTO:NPU,CPU", "openvino", machine).id == "cpu"
    assert resolve_device("HETERO:GPU.0,CPU", "openvino", machine).id == "openvino:GPU.0"
    with pytest.raises(InvalidConfig, match="HETERO:NPU,CPU"):
        resolve_device("HETERO:NPU,CPU", "openvino", machine)
    assert canonical_device_id("openvino:gpu.0", "onnxruntime") == "openvino:GPU.0"


def test_resolve_device_errors_name_what_this_machine_offers() -> None:
    machine = _machine()
    with pytest.raises(InvalidConfig) as unusable:
        resolve_device("cuda:0", "onnxruntime", machine)
    assert str(unusable.value).startswith(
        "device 'cuda:0' is not available to runtime 'onnxruntime' on this machine; available: cpu"
    )
    assert "cuda:0 is usable by: torch" in str(unusable.value)
    with pytest.raises(InvalidConfig, match=r"device 'cuda:3' .* available: cpu, cuda:0$"):
        resolve_device("cuda:3", "torch", machine)
    with pytest.raises(InvalidConfig, match=r"available: cpu, openvino:GPU.0"):
        resolve_device("NPU", "openvino", machine)
    with pytest.raises(InvalidConfig, match=r"runtime 'tensorrt' has no device support; known: "):
        resolve_device("cuda:0", "tensorrt", machine)


def test_discovery_of_this_machine_has_a_cpu_for_onnxruntime() -> None:
    discovery = discover_devices()
    cpu = discovery.cpu()
    assert cpu is not None and cpu.id == "cpu"
    assert "onnxruntime" in cpu.runtimes
    assert cpu.cores is not None and cpu.cores >= 1
    assert "CPUExecutionProvider" in discovery.providers
    assert resolve_device("cpu", "onnxruntime", discovery) is cpu
    if discovery.device("cuda:0") is None:
        with pytest.raises(InvalidConfig, match=r"not available to runtime 'onnxruntime' .* available: cpu"):
            resolve_device("cuda:0", "onnxruntime", discovery)


def test_real_nvml_discovery() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (the 'gpu' extra) is not installed")
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver here: {exc}")
    if count == 0:
        pytest.skip("NVML finds no GPU on this machine")
    discovery = discover_devices()
    gpu = discovery.device("cuda:0")
    assert gpu is not None and gpu.memory_bytes and gpu.features[0].startswith("sm_")


def test_table_formatting() -> None:
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(24 << 30) == "24.0 GiB"
    assert abbreviate_features(("a", "b", "c", "d", "e", "f")) == "c,d,e,f +2"
    assert abbreviate_features(()) == "-"
    machine = _machine()
    machine.problems.append("openvino: cannot list devices: boom")
    text = format_discovery(machine)
    lines = text.splitlines()
    assert lines[0].split() == ["ID", "KIND", "NAME", "MEMORY", "CORES", "FEATURES", "RUNTIMES"]
    assert lines[2].startswith("cuda:0") and "24.0 GiB" in lines[2]
    assert "problems:\n  - openvino: cannot list devices: boom" in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medserve", "devices", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_devices_json() -> None:
    result = _cli("--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    cpu = next(d for d in report["devices"] if d["kind"] == "cpu")
    assert cpu["id"] == "cpu" and "onnxruntime" in cpu["runtimes"]
    assert len(report["fingerprint"]) == 64
    assert isinstance(report["problems"], list)


def test_cli_devices_table() -> None:
    result = _cli()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("ID")
    assert any(line.startswith("cpu ") for line in result.stdout.splitlines())
