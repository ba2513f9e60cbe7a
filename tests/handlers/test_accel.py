"""Inference options (handlers/accel.py): read from SERVE_* variables, validated with the
variable's name, resolved for this machine (CPU in CI: the GPU path falls back to the CPU one)."""
import os

import pytest
import torch

from handlers.accel import AccelError, InferenceOptions, usable_cpus
from handlers.spec import ServingPolicy
from handlers.settings import SettingsError


def test_defaults_resolve_to_the_cpu_path_without_a_gpu():
    if torch.cuda.is_available():
        pytest.fail("this test describes the CPU fallback; CI machines have no GPU")
    r = InferenceOptions().resolve()
    assert (r.device.type, r.dtype, r.channels_last, r.tensor_decode, r.compile) == ("cpu", torch.float32, False, False, False)
    assert r.torch_threads == 1  # one thread per pass: concurrent requests, no OpenMP spinning
    assert InferenceOptions(torch_threads=2).resolve().torch_threads == 2


def test_options_come_from_the_environment():
    env = {"SERVE_DEVICE": "cpu", "SERVE_PRECISION": "bf16", "SERVE_CHANNELS_LAST": "true",
           "SERVE_TENSOR_DECODE": "yes", "SERVE_COMPILE": "0", "SERVE_TORCH_THREADS": "1", "OTHER": "x"}
    o = InferenceOptions.from_env(env)
    assert o == InferenceOptions(device="cpu", precision="bf16", channels_last=True, tensor_decode=True,
                                 compile=False, torch_threads=1)
    r = o.resolve()
    assert (r.dtype, r.channels_last, r.tensor_decode, r.torch_threads) == (torch.bfloat16, True, True, 1)
    assert "bfloat16" in r.describe() and "tensor decode" in r.describe()
    assert InferenceOptions.from_env({"SERVE_CHANNELS_LAST": "auto"}).channels_last is None


@pytest.mark.parametrize("env, message", [
    ({"SERVE_CHANNELS_LAST": "maybe"}, "SERVE_CHANNELS_LAST must be auto, true or false"),
    ({"SERVE_TORCH_THREADS": "0"}, "SERVE_TORCH_THREADS must be a positive integer"),
    ({"SERVE_TORCH_THREADS": "two"}, "SERVE_TORCH_THREADS must be a positive integer"),
])
def test_bad_values_name_their_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        InferenceOptions.from_env(env)


@pytest.mark.parametrize("options, message", [
    (InferenceOptions(precision="fp8"), "SERVE_PRECISION must be"),
    (InferenceOptions(device="tpu"), "SERVE_DEVICE"),
    (InferenceOptions(device="gpu0"), "SERVE_DEVICE: not a device"),
])
def test_settings_that_cannot_work_are_refused(options, message):
    with pytest.raises(AccelError, match=message):
        options.resolve()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_asking_for_a_gpu_where_there_is_none_is_an_error_not_a_silent_cpu_run():
    with pytest.raises(AccelError, match="no CUDA GPU"):
        InferenceOptions(device="cuda").resolve()


def test_the_models_policy_fills_what_the_environment_leaves_unset_on_the_cpu():
    heavy = ServingPolicy(workers=1, batch_size=1, torch_threads=3, channels_last=True)
    r = InferenceOptions(device="cpu").resolve(heavy)
    assert (r.torch_threads, r.channels_last) == (3, True)
    r = InferenceOptions(device="cpu", torch_threads=1, channels_last=False).resolve(heavy)  # SERVE_* win
    assert (r.torch_threads, r.channels_last) == (1, False)
    # threads 0: every CPU the process may use
    assert InferenceOptions(device="cpu").resolve(ServingPolicy(torch_threads=0)).torch_threads == usable_cpus()


@pytest.mark.parametrize("cpu_max, expected", [
    ("max 100000\n", None),  # no quota: the affinity
    ("100000 100000\n", 1),  # a pod limited to one CPU
    ("150000 100000\n", 2),  # 1.5 CPUs: two threads, each one busy part of the time
    ("50000 100000\n", 1),  # under one CPU: still one thread
    ("garbage\n", None),
])
def test_usable_cpus_follow_the_cgroup_quota(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(tmp_path / "cpu.max") == (affinity if expected is None else min(expected, affinity))
    assert usable_cpus(tmp_path / "absent") == affinity
